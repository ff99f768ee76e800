rule profiles:
    input:
        f"{RESULTS}/samples.h5",
    output:
        f"{RESULTS}/profiles.h5",
    log:
        f"{LOGS}/profiles.log",
    benchmark:
        f"{BENCH}/profiles.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=step_config("ingest", "profiles"),
    shell:
        "vaemap profiles {input} --output {output} --config-json {params.cfg:q} --json "
        "> {log} 2>&1"
