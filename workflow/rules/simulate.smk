rule simulate:
    input:
        settings=settings("simulate"),
    output:
        rdr=expand(
            f"{RESULTS}/simulate/rdr/{{name}}",
            name=simulated_rdr_names(config["simulate"]),
        ),
        truth=f"{RESULTS}/simulate/truth.h5",
        truth_maps=report(
            expand(f"{RESULTS}/simulate/truth_{{factor}}.fits", factor=TRUTH_MAPS),
            category="Ground truth",
            caption="../report/truth.rst",
        ),
    log:
        f"{LOGS}/simulate.log",
    benchmark:
        f"{BENCH}/simulate.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 4
    resources:
        # the factor maps (main process) and each writer's columns; the regolith
        # table is in $TMPDIR, read a batch at a time
        mem_mb=mem_mb(1500, column_bytes=400),
        runtime=runtime_min(10, per_m_rows=0.3, per_m_columns=4),
    params:
        outdir=lambda wildcards, output: os.path.dirname(output.truth),
    shell:
        "vaemap simulate --outdir {params.outdir:q} --threads {threads} "
        "--config {input.settings:q} "
        "--json > {log:q} 2>&1"
