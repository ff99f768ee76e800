rule maps:
    input:
        latents=f"{RESULTS}/latents.h5",
        profiles=f"{RESULTS}/profiles.h5",
        model=f"{RESULTS}/model/model.pt",
        settings=settings("maps"),
    output:
        fits=expand(f"{RESULTS}/maps/{{product}}.fits", product=PRODUCTS),
        # HealSparse copies of the maps at nside >= 4096 (vaemap.healpix)
        healsparse=(
            expand(f"{RESULTS}/maps/{{product}}.hsp", product=PRODUCTS)
            if config["profiles"]["nside"] >= 4096
            else []
        ),
        hips=[
            directory(f"{RESULTS}/maps/hips/{p}")
            for p in (
                PRODUCTS
                if config["maps"]["hips"] == ["all"]
                else config["maps"]["hips"]
            )
        ],
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
        catalogue=report(
            f"{RESULTS}/maps/anomalies.ecsv",
            category="Anomalies",
            caption="../report/anomalies.rst",
        ),
        anomaly_profiles=report(
            f"{RESULTS}/maps/anomaly_profiles.png",
            category="Anomalies",
            caption="../report/anomaly_profiles.rst",
        ),
        traversal=report(
            f"{RESULTS}/maps/latent_traversal.png",
            category="Latents",
            caption="../report/traversal.rst",
        ),
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
        rules.maps.output.hips,
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
