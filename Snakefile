# Unlearning benchmark: `snakemake --cores all results/table.csv` (tables) or `snakemake --cores all` (tables and figures).
# Loads and validates the config, includes the rules, names the default targets; logic lives in unlearnbench/.
from unlearnbench.workflow import load_workflow_config, start_run, PUBLISHED

configfile: "config/default.yaml"
report: "report/workflow.rst"  # snakemake --report report.html: the tables and figures with their captions
config = load_workflow_config(config, workflow.configfiles)
RUN = f"results/{config['run_name']}"
FIGS = f"figures/{config['run_name']}"

include: "rules/common.smk"
include: "rules/foundation.smk"
include: "rules/unlearning.smk"
include: "rules/evaluation.smk"
include: "rules/report.smk"
include: "rules/guidance.smk"
include: "rules/finding.smk"
include: "rules/robustness.smk"


onstart:  # not at parse time: a dry run writes nothing
    start_run(config, jobs_run_here=workflow.local_exec)


rule all:
    default_target: True
    input:
        expand("results/{name}", name=PUBLISHED),
        rules.figures.input,
