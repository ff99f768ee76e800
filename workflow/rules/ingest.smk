# Scatter: one ingest job per batch of RDR tables (a day of the archive, see
# ingest_batches), then one streaming k-way merge. The batch files are kept:
# when new tables arrive, only their batches and the merge run again.


rule ingest:
    input:
        tables=lambda wildcards: RDR_BATCHES[wildcards.batch],
        settings=settings("ingest"),
    output:
        f"{RESULTS}/ingest/{{batch}}.h5",
    log:
        f"{LOGS}/ingest/{{batch}}.log",
    benchmark:
        f"{BENCH}/ingest/{{batch}}.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(1000 + config["ingest"]["chunk_rows"] / 4000),
        runtime=runtime_min(5, per_gib_input=10),
    shell:
        "vaemap ingest {input.tables:q} --output {output:q} --config {input.settings:q} --json "
        "> {log:q} 2>&1"


rule merge_samples:
    input:
        parts=expand(f"{RESULTS}/ingest/{{batch}}.h5", batch=RDR_BATCHES),
        settings=settings("ingest"),
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
        mem_mb=mem_mb(1000 + config["ingest"]["chunk_rows"] / 4000),
        runtime=runtime_min(5, per_gib_input=8),
    params:
        tile=[],
    shell:
        "vaemap merge {input.parts:q} --output {output:q} {params.tile:q} "
        "--config {input.settings:q} --json > {log:q} 2>&1"
