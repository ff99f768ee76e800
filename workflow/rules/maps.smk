if config["maps"]["per_product"]:

    # Scale-out: a job per product's files, one per HiPS tile set, one for the
    # catalogue and figures; each holds one product's values. The files are
    # those of the single job below.
    rule map_product:
        input:
            **MAPS_INPUT,
        output:
            fits=f"{RESULTS}/maps/{{product}}.fits",
            healsparse=(
                f"{RESULTS}/maps/{{product}}.hsp"
                if config["profiles"]["nside"] >= 4096
                else []
            ),
            geotiff=expand(
                f"{RESULTS}/maps/{{{{product}}}}_{{grid}}.tif",
                grid=config["maps"]["geotiff"],
            ),
            png=report(
                f"{RESULTS}/maps/{{product}}.png",
                category="Maps",
                caption="../report/maps.rst",
            ),
        log:
            f"{LOGS}/maps/{{product}}.log",
        benchmark:
            f"{BENCH}/maps/{{product}}.tsv"
        wildcard_constraints:
            product="|".join(PRODUCTS),
        conda:
            "../envs/vaemap.yaml"
        threads: 2
        resources:
            mem_mb=mem_mb(2000, cubes=0.5),
            runtime=runtime_min(10, per_cube_gib=30 / len(PRODUCTS)),
        params:
            outdir=lambda wildcards, output: os.path.dirname(output.fits),
        shell:
            "vaemap maps {input.latents:q} --profiles {input.profiles:q} "
            "--model {input.model:q} --outdir {params.outdir:q} --threads {threads} "
            "--products {wildcards.product:q} --parts files "
            "--config {input.settings:q} --json > {log:q} 2>&1"

    rule map_hips:
        input:
            **MAPS_INPUT,
        output:
            directory(f"{RESULTS}/maps/hips/{{product}}"),
        log:
            f"{LOGS}/maps/hips_{{product}}.log",
        benchmark:
            f"{BENCH}/maps/hips_{{product}}.tsv"
        wildcard_constraints:
            product="|".join(HIPS_PRODUCTS),
        conda:
            "../envs/vaemap.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(2000, cubes=0.5),
            runtime=runtime_min(10, per_cube_gib=30 / len(PRODUCTS)),
        params:
            outdir=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
        shell:
            "vaemap maps {input.latents:q} --profiles {input.profiles:q} "
            "--model {input.model:q} --outdir {params.outdir:q} "
            "--products {wildcards.product:q} --parts hips "
            "--config {input.settings:q} --json > {log:q} 2>&1"

    rule maps:
        input:
            **MAPS_INPUT,
            products=expand(f"{RESULTS}/maps/{{product}}.fits", product=PRODUCTS),
            hips=[f"{RESULTS}/maps/hips/{p}" for p in HIPS_PRODUCTS],
        output:
            **MAPS_EXTRAS,
        log:
            f"{LOGS}/maps.log",
        benchmark:
            f"{BENCH}/maps.tsv"
        conda:
            "../envs/vaemap.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(2000, cubes=2.0),
            runtime=runtime_min(10, per_cube_gib=10),
        params:
            outdir=lambda wildcards, output: os.path.dirname(output.catalogue),
        shell:
            "vaemap maps {input.latents:q} --profiles {input.profiles:q} "
            "--model {input.model:q} --outdir {params.outdir:q} --products --parts extras "
            "--config {input.settings:q} --json > {log:q} 2>&1"

else:

    rule maps:
        input:
            **MAPS_INPUT,
        output:
            **MAPS_EXTRAS,
            fits=expand(f"{RESULTS}/maps/{{product}}.fits", product=PRODUCTS),
            # HealSparse copies of the maps at nside >= 4096 (vaemap.healpix)
            healsparse=(
                expand(f"{RESULTS}/maps/{{product}}.hsp", product=PRODUCTS)
                if config["profiles"]["nside"] >= 4096
                else []
            ),
            hips=[directory(f"{RESULTS}/maps/hips/{p}") for p in HIPS_PRODUCTS],
            geotiff=expand(
                f"{RESULTS}/maps/{{product}}_{{grid}}.tif",
                product=PRODUCTS,
                grid=config["maps"]["geotiff"],
            ),
            png=[
                report(
                    f"{RESULTS}/maps/{product}.png",
                    category="Maps",
                    subcategory=product.split("_")[0],
                    caption="../report/maps.rst",
                )
                for product in PRODUCTS
            ],
        log:
            f"{LOGS}/maps.log",
        benchmark:
            f"{BENCH}/maps.tsv"
        conda:
            "../envs/vaemap.yaml"
        threads: 2
        resources:
            mem_mb=mem_mb(2000, cubes=2.0),
            runtime=runtime_min(10, per_cube_gib=30),
        params:
            outdir=lambda wildcards, output: os.path.dirname(output.fits[0]),
        shell:
            "vaemap maps {input.latents:q} --profiles {input.profiles:q} --model {input.model:q} "
            "--outdir {params.outdir:q} --threads {threads} --config {input.settings:q} --json "
            "> {log:q} 2>&1"


# The Aladin Lite page over the HiPS tile sets: not part of the default target,
# since it needs Aladin Lite from npm (`npm ci --prefix viewer`; `make viewer`).
rule viewer:
    input:
        [f"{RESULTS}/maps/hips/{p}" for p in HIPS_PRODUCTS],
    output:
        f"{RESULTS}/maps/hips/index.html",
    log:
        f"{LOGS}/viewer.log",
    conda:
        "../envs/vaemap.yaml"
    params:
        root=lambda wildcards, output: os.path.dirname(output[0]),
        aladin=os.path.join(
            workflow.basedir,
            "..",
            "viewer",
            "node_modules",
            "aladin-lite",
            "dist",
            "aladin.js",
        ),
    shell:
        "vaemap viewer {params.root:q} --aladin-js {params.aladin:q} --json > {log:q} 2>&1"
