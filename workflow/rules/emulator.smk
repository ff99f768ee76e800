rule emulator:
    input:
        settings=emulator_settings(),
        physics=physics_settings,
    output:
        emulator=f"{RESULTS}/emulator/emulator.pt",
        accuracy=f"{RESULTS}/emulator/accuracy.json",
    log:
        f"{LOGS}/emulator.log",
    benchmark:
        f"{BENCH}/emulator.tsv"
    conda:
        "../envs/vaemap.yaml"
    threads: 4
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "vaemap emulator --output {output.emulator:q} --accuracy {output.accuracy:q} "
        "--threads {threads} --config {input.settings:q} --json > {log:q} 2>&1"
