rule encode:
    input:
        profiles=f"{RESULTS}/profiles.h5",
        model=f"{RESULTS}/model/model.pt",
    output:
        f"{RESULTS}/latents.h5",
    log:
        f"{LOGS}/encode.log",
    benchmark:
        f"{BENCH}/encode.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        cfg=step_config("encode", "device"),
    shell:
        "vaemap encode {input.profiles} {input.model} --output {output} "
        "--config-json {params.cfg:q} --json > {log} 2>&1"
