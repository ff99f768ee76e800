# Profiles read the samples' own channel list, so only the profiles section
# is theirs: a change to another step's key does not re-run them.


rule profiles:
    input:
        samples=f"{RESULTS}/samples.h5",
        settings=settings("profiles"),
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
        mem_mb=mem_mb(1000, cubes=4.0),
        runtime=runtime_min(5, per_gib_input=15),
    params:
        tile=[],
    shell:
        "vaemap profiles {input.samples:q} --output {output:q} {params.tile:q} "
        "--config {input.settings:q} --json > {log:q} 2>&1"


if config["profiles"]["tile_nside"]:

    # Scale-out: the samples merged per NESTED tile (each tile's rows from every
    # day's file: a contiguous slice of each pixel-sorted file), then one
    # profiles job per tile and one merge of the profiles. No job reads more
    # than its tile's samples; samples.h5 is made only when asked for.
    use rule merge_samples as merge_samples_tile with:
        output:
            temp(f"{RESULTS}/samples_tiles/tile_{{tile}}.h5"),
        log:
            f"{LOGS}/merge_samples/tile_{{tile}}.log",
        benchmark:
            f"{BENCH}/merge_samples/tile_{{tile}}.tsv"
        resources:
            mem_mb=mem_mb(1000 + config["ingest"]["chunk_rows"] / 4000),
            # a tile's share of the days' files, three times the mean share:
            # polar tiles, where the orbits converge, hold more samples
            runtime=runtime_min(5, per_gib_input=24 / len(tiles("profiles"))),
        params:
            tile=tile_flag("profiles"),

    use rule profiles as profiles_tile with:
        input:
            samples=f"{RESULTS}/samples_tiles/tile_{{tile}}.h5",
            settings=settings("profiles"),
        output:
            temp(f"{RESULTS}/profiles_tiles/tile_{{tile}}.h5"),
        log:
            f"{LOGS}/profiles/tile_{{tile}}.log",
        benchmark:
            f"{BENCH}/profiles/tile_{{tile}}.tsv"
        params:
            tile=tile_flag("profiles"),

    rule merge_profiles:
        input:
            parts=expand(
                f"{RESULTS}/profiles_tiles/tile_{{tile}}.h5", tile=tiles("profiles")
            ),
            settings=settings("profiles"),
        output:
            f"{RESULTS}/profiles.h5",
        log:
            f"{LOGS}/profiles.log",
        benchmark:
            f"{BENCH}/profiles.tsv"
        conda:
            "../envs/vaemap.yaml"
        resources:
            mem_mb=mem_mb(1000, cubes=4.0),
            runtime=runtime_min(5, per_cube_gib=10),
        shell:
            "vaemap merge-profiles {input.parts:q} --output {output:q} "
            "--config {input.settings:q} --json > {log:q} 2>&1"

    ruleorder: merge_profiles > profiles
