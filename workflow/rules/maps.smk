rule maps:
    input:
        f"{RESULTS}/latents.h5",
    output:
        fits=expand(f"{RESULTS}/maps/{{product}}.fits", product=PRODUCTS),
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
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=step_config("maps", "model"),
        outdir=lambda wildcards, output: os.path.dirname(output.fits[0]),
    shell:
        "vaemap maps {input} --outdir {params.outdir} --config-json {params.cfg:q} "
        "--json > {log} 2>&1"
