rule evaluate:
    input:
        unpack(truth_input),
        latents=f"{RESULTS}/latents.h5",
        profiles=f"{RESULTS}/profiles.h5",
        model=f"{RESULTS}/model/model.pt",
    output:
        metrics=f"{RESULTS}/evaluate/main/metrics.json",
        table=report(
            f"{RESULTS}/evaluate/main/metrics.md",
            category="Evaluation",
            caption="../report/metrics_main.rst",
        ),
        kl=report(
            f"{RESULTS}/evaluate/main/kl.png",
            category="Evaluation",
            caption="../report/kl.rst",
        ),
        heatmap=report_if_truth(
            f"{RESULTS}/evaluate/main/correlation.png",
            category="Evaluation",
            caption="../report/correlation.rst",
        ),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1500, cubes=4.0),
        runtime=runtime_min(10, per_cube_gib=30),
    params:
        truth=truth_flag,
        # the PCA baseline and the linear probe of the profiles
        baselines=lambda wildcards, input: [
            "--profiles",
            input.profiles,
            "--model",
            input.model,
        ],
        outdir=lambda wildcards, output: os.path.dirname(output.metrics),
    shell:
        "vaemap evaluate {input.latents:q} {params.truth:q} {params.baselines:q} "
        "--outdir {params.outdir:q} --json > {log:q} 2>&1"
