# Config-driven sweeps: one model per value of sweep.beta / latent_dim / seed,
# each trained, encoded and evaluated like the main model, then one table.


rule train_sweep:
    input:
        f"{RESULTS}/profiles.h5",
    output:
        model=f"{RESULTS}/sweep/{{param}}={{value}}/model.pt",
        metrics=f"{RESULTS}/sweep/{{param}}={{value}}/train_metrics.csv",
    log:
        f"{LOGS}/sweep/train_{{param}}={{value}}.log",
    benchmark:
        f"{BENCH}/sweep/train_{{param}}={{value}}.tsv"
    wildcard_constraints:
        param="beta|latent_dim|seed",
    conda:
        "../envs/vaemap.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=8000,
        gpu=1 if config["train"]["gpu"] else 0,
    params:
        cfg=sweep_step_config("ingest", "profiles", "model", "train", "seed", "device"),
    shell:
        "vaemap train {input} --output {output.model} --metrics {output.metrics} "
        "--resume --no-progress --config-json {params.cfg:q} --json > {log} 2>&1"


rule encode_sweep:
    input:
        profiles=f"{RESULTS}/profiles.h5",
        model=f"{RESULTS}/sweep/{{param}}={{value}}/model.pt",
    output:
        temp(f"{RESULTS}/sweep/{{param}}={{value}}/latents.h5"),
    log:
        f"{LOGS}/sweep/encode_{{param}}={{value}}.log",
    wildcard_constraints:
        param="beta|latent_dim|seed",
    conda:
        "../envs/vaemap.yaml"
    threads: 2
    params:
        cfg=step_config("encode", "device"),
    shell:
        "vaemap encode {input.profiles} {input.model} --output {output} "
        "--set encode.store_recon=false --config-json {params.cfg:q} --json > {log} 2>&1"


rule evaluate_sweep:
    input:
        unpack(truth_input),
        latents=f"{RESULTS}/sweep/{{param}}={{value}}/latents.h5",
    output:
        metrics=f"{RESULTS}/sweep/{{param}}={{value}}/metrics.json",
    log:
        f"{LOGS}/sweep/evaluate_{{param}}={{value}}.log",
    wildcard_constraints:
        param="beta|latent_dim|seed",
    conda:
        "../envs/vaemap.yaml"
    threads: 1
    params:
        truth=truth_flag,
        outdir=lambda wildcards, output: os.path.dirname(output.metrics),
    shell:
        "vaemap evaluate {input.latents} {params.truth} --outdir {params.outdir} --json "
        "> {log} 2>&1"


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
