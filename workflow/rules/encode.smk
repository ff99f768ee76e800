rule encode:
    input:
        profiles=f"{RESULTS}/profiles.h5",
        model=f"{RESULTS}/model/model.pt",
        settings=settings("encode", "device"),
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
        mem_mb=mem_mb(1500, cubes=3.0),
        runtime=runtime_min(5, per_cube_gib=30),
        gpu=wants_gpu(),
    params:
        extra=[],
    shell:
        "vaemap encode {input.profiles:q} {input.model:q} --output {output:q} {params.extra:q} "
        "--config {input.settings:q} --json > {log:q} 2>&1"


if config["encode"]["tile_nside"]:

    # Scale-out: one job per NESTED tile, then one merge that scores the
    # anomalies over every pixel (a robust z needs them all).
    use rule encode as encode_tile with:
        output:
            temp(f"{RESULTS}/encode/tile_{{tile}}.h5"),
        log:
            f"{LOGS}/encode/tile_{{tile}}.log",
        benchmark:
            f"{BENCH}/encode/tile_{{tile}}.tsv"
        params:
            extra=tile_flag("encode"),

    rule merge_latents:
        input:
            parts=expand(f"{RESULTS}/encode/tile_{{tile}}.h5", tile=tiles("encode")),
            settings=settings("encode", "device"),
        output:
            f"{RESULTS}/latents.h5",
        log:
            f"{LOGS}/encode.log",
        benchmark:
            f"{BENCH}/encode.tsv"
        conda:
            "../envs/vaemap.yaml"
        resources:
            mem_mb=mem_mb(1500, cubes=3.0),
            runtime=runtime_min(5, per_cube_gib=10),
        shell:
            "vaemap merge-latents {input.parts:q} --output {output:q} "
            "--config {input.settings:q} --json > {log:q} 2>&1"

    ruleorder: merge_latents > encode
