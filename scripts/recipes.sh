# The suite's per-task training recipe, sourced by scripts/train_adapters.sh (the experts) and
# scripts/train_variant_experts.sh (the same recipe for a training variant).
# One recipe for every task but the step count. 100 steps × 8 sequences (4 epochs of 200) for the
# first five tasks; 60 for the others, which was enough to clear the bar in docs/adapters.md and
# keeps `make adapters` near 30 minutes on 2 cores. reverse_word gets 200: at 60 its adapter cut the
# loss threefold but got no test answer right; at 200 it gets a fifth of them.
# The long-tailed reverse_upper has 8 training examples. From PEFT's initialisation no recipe
# generalised (30 steps at 1e-3 memorised them: train loss 0.03, validation 7.5 against the base's
# 9.4; 12 steps at 3e-4: validation 5.8). It starts instead from the reverse_word adapter
# (--init-from, so it is trained after it) and takes 24 steps at 3e-4.
steps_for() {
  case "$1" in
    reverse_upper) echo 24 ;;
    add_2digit|capital_facts|count_vowels|date_eu|date_us) echo 100 ;;
    reverse_word) echo 200 ;;
    *) echo 60 ;;
  esac
}
lr_for() { case "$1" in reverse_upper) echo 3e-4 ;; *) echo 1e-3 ;; esac; }
init_for() { case "$1" in reverse_upper) echo adapters/reverse_word ;; esac; }

