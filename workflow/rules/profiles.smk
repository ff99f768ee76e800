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

    # Scale-out: one job per NESTED tile (a contiguous slice of the pixel-sorted
    # samples), then one merge.
    use rule profiles as profiles_tile with:
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
