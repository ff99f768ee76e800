rule ingest:
    input:
        rdr_inputs(),
    output:
        f"{RESULTS}/samples.h5",
    log:
        f"{LOGS}/ingest.log",
    benchmark:
        f"{BENCH}/ingest.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        cfg=step_config("ingest"),
    shell:
        "vaemap ingest {input} --output {output} --config-json {params.cfg:q} --json "
        "> {log} 2>&1"
