# Config-driven sweeps: one model per value of sweep.beta / latent_dim / seed,
# trained, encoded and evaluated by the main model's rules with the swept
# value in place, then one table.


wildcard_constraints:
    param="beta|latent_dim|seed",


use rule train as train_sweep with:
    input:
        f"{RESULTS}/profiles.h5",
    output:
        model=f"{RESULTS}/sweep/{{param}}={{value}}/model.pt",
        metrics=f"{RESULTS}/sweep/{{param}}={{value}}/train_metrics.csv",
        curve=f"{RESULTS}/sweep/{{param}}={{value}}/loss_curve.png",
    log:
        f"{LOGS}/sweep/train_{{param}}={{value}}.log",
    benchmark:
        f"{BENCH}/sweep/train_{{param}}={{value}}.tsv"
    params:
        cfg=sweep_step_config("model", "train", "seed", "device"),


use rule encode as encode_sweep with:
    input:
        profiles=f"{RESULTS}/profiles.h5",
        model=f"{RESULTS}/sweep/{{param}}={{value}}/model.pt",
    output:
        temp(f"{RESULTS}/sweep/{{param}}={{value}}/latents.h5"),
    log:
        f"{LOGS}/sweep/encode_{{param}}={{value}}.log",
    benchmark:
        f"{BENCH}/sweep/encode_{{param}}={{value}}.tsv"
    params:
        cfg=step_config("encode", "device"),
        extra="--set encode.store_recon=false",


use rule evaluate as evaluate_sweep with:
    input:
        unpack(truth_input),
        latents=f"{RESULTS}/sweep/{{param}}={{value}}/latents.h5",
    output:
        metrics=f"{RESULTS}/sweep/{{param}}={{value}}/metrics.json",
    log:
        f"{LOGS}/sweep/evaluate_{{param}}={{value}}.log",
    benchmark:
        f"{BENCH}/sweep/evaluate_{{param}}={{value}}.tsv"
    params:
        truth=truth_flag,
        baselines="",
        outdir=lambda wildcards, output: os.path.dirname(output.metrics),


rule sweep_summary:
    input:
        main=f"{RESULTS}/evaluate/metrics.json",
        variants=sweep_metrics(),
    output:
        table=report(
            f"{RESULTS}/sweep/summary.md",
            category="Evaluation",
            caption="../report/sweep.rst",
        ),
        csv=f"{RESULTS}/sweep/summary.csv",
    log:
        f"{LOGS}/sweep/summary.log",
    conda:
        "../envs/vaemap.yaml"
    threads: 1
    params:
        labels=sweep_table_labels(),
    shell:
        "vaemap summarize {input.main} {input.variants} --labels {params.labels:q} "
        "--output {output.table} --csv {output.csv} > {log} 2>&1"
