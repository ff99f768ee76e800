if config["profiles"]["tile_nside"]:

    # Scale-out: one job per NESTED tile (a contiguous slice of the pixel-sorted
    # samples), then one merge.
    rule profiles_tile:
        input:
            f"{RESULTS}/samples.h5",
        output:
            temp(f"{RESULTS}/profiles_tiles/tile_{{tile}}.h5"),
        log:
            f"{LOGS}/profiles/tile_{{tile}}.log",
        benchmark:
            f"{BENCH}/profiles/tile_{{tile}}.tsv"
        conda:
            "../envs/vaemap.yaml"
        threads: 1
        resources:
            mem_mb=4000,
        params:
            cfg=step_config("ingest", "profiles"),
            tile=lambda wildcards: f"{config['profiles']['tile_nside']}/{wildcards.tile}",
        shell:
            "vaemap profiles {input} --output {output} --tile {params.tile} "
            "--config-json {params.cfg:q} --json > {log} 2>&1"

    rule merge_profiles:
        input:
            expand(
                f"{RESULTS}/profiles_tiles/tile_{{tile}}.h5",
                tile=range(12 * config["profiles"]["tile_nside"] ** 2),
            ),
        output:
            f"{RESULTS}/profiles.h5",
        log:
            f"{LOGS}/profiles.log",
        benchmark:
            f"{BENCH}/profiles.tsv"
        conda:
            "../envs/vaemap.yaml"
        resources:
            mem_mb=4000,
        params:
            cfg=step_config("ingest", "profiles"),
        shell:
            "vaemap merge-profiles {input} --output {output} "
            "--config-json {params.cfg:q} --json > {log} 2>&1"

else:

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
