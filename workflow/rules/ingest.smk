# Scatter: one ingest job per RDR table, then one streaming k-way merge.


rule ingest:
    input:
        lambda wildcards: RDR_TABLES[wildcards.table],
    output:
        temp(f"{RESULTS}/ingest/{{table}}.h5"),
    log:
        f"{LOGS}/ingest/{{table}}.log",
    benchmark:
        f"{BENCH}/ingest/{{table}}.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 2
    resources:
        mem_mb=2000,
    params:
        cfg=step_config("ingest"),
    shell:
        "vaemap ingest {input} --output {output} --config-json {params.cfg:q} --json "
        "> {log} 2>&1"


rule merge_samples:
    input:
        expand(f"{RESULTS}/ingest/{{table}}.h5", table=RDR_TABLES),
    output:
        f"{RESULTS}/samples.h5",
    log:
        f"{LOGS}/merge_samples.log",
    benchmark:
        f"{BENCH}/merge_samples.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=step_config("ingest"),
    shell:
        "vaemap merge {input} --output {output} --config-json {params.cfg:q} --json "
        "> {log} 2>&1"
