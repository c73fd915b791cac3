"""SAFEMax+R: SAFEMax with a retain term, a variant of the published algorithm (not on the poster).

Each step adds the standard denoising loss on real images of the remaining classes (weight 1, a batch as large as
the forget batch) to SAFEMax's forget loss: twice the passes of SAFEMax per step, so its RTE is not SAFEMax's.
Shown beside SAFEMax, it measures what the retain term buys where the published algorithm damages the remaining
classes (docs/safemax-finding.md).
"""

VARIANT_OF = "safemax"
DISPLAY_NAME = "SAFEMax+R"
COLOR = "tab:purple"
NOTE = "SAFEMax plus the standard loss on the remaining classes (retain_weight 1): not in the paper."
CHANGES = {"retain_weight": 1.0}
