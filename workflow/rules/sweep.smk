# Config-driven sweeps: the main model re-trained with every extra seed of
# sweep.seed, and one model per value of sweep.beta / latent_dim with each
# seed, trained, encoded and evaluated by the main model's rules with the
# swept values in place; then one table of mean ± sd over the seeds.


wildcard_constraints:
    variant="(beta|latent_dim|seed)=[^/,]+(,seed=[^/,]+)?",


use rule train as train_sweep with:
    input:
        unpack(emulator_input),
        profiles=f"{RESULTS}/profiles.h5",
        settings=sweep_settings("model", "train", "seed", "device"),
    output:
        model=f"{RESULTS}/sweep/{{variant}}/model.pt",
        metrics=f"{RESULTS}/sweep/{{variant}}/train_metrics.csv",
        curve=f"{RESULTS}/sweep/{{variant}}/loss_curve.png",
        sigma=f"{RESULTS}/sweep/{{variant}}/likelihood_sigma.png",
    log:
        f"{LOGS}/sweep/train_{{variant}}.log",
    benchmark:
        f"{BENCH}/sweep/train_{{variant}}.tsv"
    priority: 0


use rule encode as encode_sweep with:
    input:
        profiles=f"{RESULTS}/profiles.h5",
        model=f"{RESULTS}/sweep/{{variant}}/model.pt",
        settings=settings("encode", "device"),
    output:
        temp(f"{RESULTS}/sweep/{{variant}}/latents.h5"),
    log:
        f"{LOGS}/sweep/encode_{{variant}}.log",
    benchmark:
        f"{BENCH}/sweep/encode_{{variant}}.tsv"
    params:
        extra=["--set", "encode.store_recon=false"],


use rule evaluate as evaluate_sweep with:
    input:
        unpack(truth_input),
        latents=f"{RESULTS}/sweep/{{variant}}/latents.h5",
        profiles=f"{RESULTS}/profiles.h5",
        model=f"{RESULTS}/sweep/{{variant}}/model.pt",
    output:
        metrics=f"{RESULTS}/sweep/{{variant}}/metrics.json",
        table=f"{RESULTS}/sweep/{{variant}}/metrics.md",
        kl=f"{RESULTS}/sweep/{{variant}}/kl.png",
        heatmap=if_truth(f"{RESULTS}/sweep/{{variant}}/correlation.png"),
    log:
        f"{LOGS}/sweep/evaluate_{{variant}}.log",
    benchmark:
        f"{BENCH}/sweep/evaluate_{{variant}}.tsv"
    params:
        truth=truth_flag,
        # the baselines for every seed; the probes, properties of the data, once
        baselines=lambda wildcards, input: [
            "--profiles",
            input.profiles,
            "--model",
            input.model,
            "--no-probes",
        ],
        outdir=lambda wildcards, output: os.path.dirname(output.metrics),


rule summarize:
    input:
        main=f"{RESULTS}/evaluate/main/metrics.json",
        variants=sweep_metrics(),
    output:
        metrics=f"{RESULTS}/evaluate/metrics.json",
        table=report(
            f"{RESULTS}/evaluate/metrics.md",
            category="Evaluation",
            caption="../report/metrics.rst",
        ),
        csv=f"{RESULTS}/evaluate/runs.csv",
    log:
        f"{LOGS}/summarize.log",
    benchmark:
        f"{BENCH}/summarize.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 1
    params:
        labels=["main", *sweep_labels()],
        main_label=main_label(),
    shell:
        "vaemap summarize {input.main:q} {input.variants:q} --labels {params.labels:q} "
        "--main-label {params.main_label:q} --output {output.metrics:q} "
        "--markdown {output.table:q} --csv {output.csv:q} > {log:q} 2>&1"
