rule train:
    input:
        unpack(emulator_input),
        profiles=f"{RESULTS}/profiles.h5",
        settings=settings("model", "train", "seed", "device"),
    output:
        model=f"{RESULTS}/model/model.pt",
        metrics=f"{RESULTS}/model/train_metrics.csv",
        curve=report(
            f"{RESULTS}/model/loss_curve.png",
            category="Training",
            caption="../report/loss_curve.rst",
        ),
        sigma=report(
            f"{RESULTS}/model/likelihood_sigma.png",
            category="Training",
            caption="../report/likelihood_sigma.rst",
        ),
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{BENCH}/train.tsv"
    # the main model first: its encode and maps then overlap the sweep trainings
    priority: 1
    conda:
        "../envs/vaemap.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=mem_mb(1500, cubes=3.0 * trained_fraction()),
        runtime=runtime_min(10, per_cube_gib_epoch=40),
        gpu=wants_gpu(),
    params:
        emulator=emulator_flag,
    shell:
        "vaemap train {input.profiles:q} --output {output.model:q} --metrics {output.metrics:q} "
        "--curve {output.curve:q} --sigma {output.sigma:q} {params.emulator:q} --resume --no-progress --config {input.settings:q} "
        "--json > {log:q} 2>&1"
