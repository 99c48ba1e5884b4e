"""Names of the reproduction's molecules and label sets (no heavy imports: the CLI's parser reads them).

The shared MD17 files (``../shared/data/md17``) carry two label sets per
molecule: the original MD17 labels the paper used and the recomputed rMD17 ones.
"""

MOLECULES = ("naphthalene", "benzene", "uracil", "aspirin")
#: 'md17': the original MD17 labels (E_md17/F_md17) — the paper's; 'rmd17': the recomputed rMD17 labels.
LABEL_SETS = ("md17", "rmd17")
LABEL_DESCRIPTIONS = {
    "md17": "original MD17 labels (E_md17/F_md17, PBE+vdW-TS): the paper's",
    "rmd17": "rMD17 labels (E/F, PBE/def2-SVP, tight SCF)",
}
