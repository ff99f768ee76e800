if config["encode"]["tile_nside"]:

    # Scale-out: one job per NESTED tile, then one merge that scores the
    # anomalies over every pixel (a robust z needs them all).
    rule encode_tile:
        input:
            profiles=f"{RESULTS}/profiles.h5",
            model=f"{RESULTS}/model/model.pt",
        output:
            temp(f"{RESULTS}/encode/tile_{{tile}}.h5"),
        log:
            f"{LOGS}/encode/tile_{{tile}}.log",
        benchmark:
            f"{BENCH}/encode/tile_{{tile}}.tsv"
        conda:
            "../envs/vaemap.yaml"
        threads: 2
        resources:
            mem_mb=4000,
        params:
            cfg=step_config("encode", "device"),
            tile=lambda wildcards: f"{config['encode']['tile_nside']}/{wildcards.tile}",
        shell:
            "vaemap encode {input.profiles} {input.model} --output {output} "
            "--tile {params.tile} --config-json {params.cfg:q} --json > {log} 2>&1"

    rule merge_latents:
        input:
            expand(
                f"{RESULTS}/encode/tile_{{tile}}.h5",
                tile=range(12 * config["encode"]["tile_nside"] ** 2),
            ),
        output:
            f"{RESULTS}/latents.h5",
        log:
            f"{LOGS}/encode.log",
        benchmark:
            f"{BENCH}/encode.tsv"
        conda:
            "../envs/vaemap.yaml"
        resources:
            mem_mb=4000,
        params:
            cfg=step_config("encode", "device"),
        shell:
            "vaemap merge-latents {input} --output {output} "
            "--config-json {params.cfg:q} --json > {log} 2>&1"

else:

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
