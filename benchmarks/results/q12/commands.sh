cd /work/q12
export TF_USE_LEGACY_KERAS=1
P="nice -n 19 /work/main/.venv/bin/python -m benchmarks.q12_probe"
$P --dataset ml-100k --holdout test --epochs 15 --set train.validation=time --seed 42 --out benchmarks/results/q12/t_timeval_s42.json > /tmp/q12-logs/t_timeval_s42.log 2>&1
$P --dataset ml-100k --holdout test --epochs 15 --seed 42 --out benchmarks/results/q12/t_default_s42.json > /tmp/q12-logs/t_default_s42.log 2>&1
$P --dataset ml-1m --holdout test --epochs 15 --set train.validation=time --seed 42 --out benchmarks/results/q12/t1m_timeval_s42.json > /tmp/q12-logs/t1m_timeval_s42.log 2>&1
$P --dataset ml-100k --holdout test --epochs 15 --set train.validation=time --seed 43 --out benchmarks/results/q12/t_timeval_s43.json > /tmp/q12-logs/t_timeval_s43.log 2>&1
$P --dataset ml-100k --holdout test --epochs 15 --set train.validation=time --seed 44 --out benchmarks/results/q12/t_timeval_s44.json > /tmp/q12-logs/t_timeval_s44.log 2>&1
$P --dataset ml-1m --holdout test --epochs 15 --seed 42 --out benchmarks/results/q12/t1m_default_s42.json > /tmp/q12-logs/t1m_default_s42.log 2>&1
echo done > /tmp/q12-logs/chain.done

# 2026-12-02 evening: the transformer on the ML-1M validation window; the default's seeds 43, 44 on the ML-1M test split
$P --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set model.sequence_encoder=transformer --out benchmarks/results/q12/v1m_tf.json
for s in 43 44; do $P --dataset ml-1m --holdout test --epochs 15 --set train.validation=time --seed $s --out benchmarks/results/q12/t1m_timeval_s$s.json; done
$P --dataset ml-1m --holdout test --epochs 15 --set train.validation=time --set model.sequence_encoder=transformer --seed 42 --out benchmarks/results/q12/t1m_tf_s42.json

# 2026-12-03: the transformer with ReZero gates and no output LayerNorm, from /work/main: the
# ML-100K window, then the synthetic and ML-1M sample windows side by side (those two without nice)
Q="/work/main/.venv/bin/python -m benchmarks.q12_probe"
R="--set model.sequence_encoder=transformer --set model.transformer_rezero=true --set model.transformer_output_norm=false"
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 $R --out benchmarks/results/q12/v_tf_rezero.json
$Q --dataset synthetic --holdout validation --epochs 20 --seed 42 $R --out benchmarks/results/q12/vs_tf_rezero_s42.json &
$Q --dataset ml-1m --holdout validation --epochs 15 --seed 42 $R --out benchmarks/results/q12/v1m_tf_rezero.json &
wait

# 2026-12-03 midday: decoupled weight decay (AdamW) on the ML-100K validation window, the two side by side
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.weight_decay=0.1 --out /tmp/q12out/v_wd01.json &
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.weight_decay=0.5 --out /tmp/q12out/v_wd05.json &
wait

# 2026-12-03 midday: the batch size on the ML-100K validation window, the two side by side
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.batch_size=2048 --out /tmp/q12out/v_bs2048.json &
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.batch_size=256 --out /tmp/q12out/v_bs256.json &
wait

# 2026-12-03 early afternoon: a longer history sequence on both validation windows, side by side
$Q --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set features.history_length=200 --out /tmp/q12out/v1m_hist200.json &
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set features.history_length=200 --out /tmp/q12out/v_hist200.json &
wait

# 2026-12-03 afternoon: the id embedding and output widths on the ML-100K validation window, side by side
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set model.id_embedding_dim=128 --out /tmp/q12out/v_id128.json &
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set model.output_dim=64 --out /tmp/q12out/v_out64.json &
wait

# 2026-12-03 late afternoon (from /work/main at 521a48d with user_feature_lag.patch; v_lagboth3 with an
# earlier form of it that lagged the story features too, `train.feature_lag_days`): stale user features
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.feature_lag_days=3 --out /tmp/q12out/v_lag3.json &  # kept as v_lagboth3.json
wait
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.user_feature_lag_days=3 --out /tmp/q12out/v_ulag3.json &
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.user_feature_lag_days=30 --out /tmp/q12out/v_ulag30.json &
wait
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.user_feature_lag_days=0.25 --out /tmp/q12out/v_ulag025.json &
$Q --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set train.user_feature_lag_days=0.25 --out /tmp/q12out/v1m_ulag025.json &
wait

# Time-local batches (30c3659; before it the option's default was 0), then with mask_same_user.patch
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.time_block_batches=4 --out /tmp/q12out/v_tb4.json &
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.time_block_batches=16 --out /tmp/q12out/v_tb16.json &
wait
$Q --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set train.time_block_batches=16 --out /tmp/q12out/v1m_tb16.json &
$Q --dataset synthetic --holdout validation --epochs 20 --seed 42 --set train.time_block_batches=16 --out /tmp/q12out/vs_tb16_s42.json &
wait
$Q --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.time_block_batches=16 --set model.mask_same_user=true --out /tmp/q12out/v_tb16_msu.json &
$Q --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set train.time_block_batches=16 --set model.mask_same_user=true --out /tmp/q12out/v1m_tb16_msu.json &
wait
# the test splits, three seeds (ML-100K, ML-1M sample), and the synthetic window's seeds 43, 44
for s in 42 43; do $Q --dataset ml-100k --holdout test --epochs 15 --seed $s --set train.time_block_batches=16 --out /tmp/q12out/t_tb16_s$s.json & done
wait
$Q --dataset ml-100k --holdout test --epochs 15 --seed 44 --set train.time_block_batches=16 --out /tmp/q12out/t_tb16_s44.json &
$Q --dataset ml-1m --holdout test --epochs 15 --seed 42 --set train.time_block_batches=16 --out /tmp/q12out/t1m_tb16_s42.json
wait
$Q --dataset ml-1m --holdout test --epochs 15 --seed 43 --set train.time_block_batches=16 --out /tmp/q12out/t1m_tb16_s43.json &
$Q --dataset ml-1m --holdout test --epochs 15 --seed 44 --set train.time_block_batches=16 --out /tmp/q12out/t1m_tb16_s44.json
wait
$Q --dataset synthetic --holdout validation --epochs 20 --seed 43 --set train.time_block_batches=16 --out /tmp/q12out/vs_tb16_s43.json &
$Q --dataset synthetic --holdout validation --epochs 20 --seed 44 --set train.time_block_batches=16 --out /tmp/q12out/vs_tb16_s44.json
wait

# 2026-12-04, from /work/main at f32049f, two side by side, written first under /tmp/s17/q12.
python -m benchmarks.q12_probe --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set model.corpus_negatives=256 --out benchmarks/results/q12/v_tb16_cneg256.json
python -m benchmarks.q12_probe --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set model.corpus_negatives=256 --out benchmarks/results/q12/v1m_tb16_cneg256.json
# With user_snapshot.patch applied (its first form for v_us, v_us_tb0, v1m_us; see README.md).
python -m benchmarks.q12_probe --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.example_features=user_snapshot --out benchmarks/results/q12/v_us.json
python -m benchmarks.q12_probe --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set train.example_features=user_snapshot --out benchmarks/results/q12/v1m_us.json
python -m benchmarks.q12_probe --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.example_features=user_snapshot --set train.time_block_batches=0 --out benchmarks/results/q12/v_us_tb0.json
python -m benchmarks.q12_probe --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.example_features=user_snapshot --out benchmarks/results/q12/v_us2.json
python -m benchmarks.q12_probe --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set train.example_features=user_snapshot --out benchmarks/results/q12/v1m_us2.json
for s in 42 43 44; do python -m benchmarks.q12_probe --dataset synthetic --holdout test --epochs 20 --seed $s --baselines --out benchmarks/results/q12/ts_tb16_s$s.json; done
for s in 42 43; do python -m benchmarks.q12_probe --dataset synthetic --holdout test --epochs 20 --seed $s --set model.negatives=impressions --out benchmarks/results/q12/ts_pointwise_s$s.json; done
python -m benchmarks.q12_probe --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set train.learning_rate=0.001 --out benchmarks/results/q12/v_lr1e3.json
python -m benchmarks.q12_probe --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set train.learning_rate=0.001 --out benchmarks/results/q12/v1m_lr1e3.json
python -m benchmarks.q12_probe --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set model.popularity_prior=true --out benchmarks/results/q12/v_tb16_prior.json
python -m benchmarks.q12_probe --dataset ml-1m --holdout validation --epochs 15 --seed 42 --set model.popularity_prior=true --out benchmarks/results/q12/v1m_tb16_prior.json
python -m benchmarks.q12_probe --dataset ml-100k --holdout validation --epochs 15 --seed 42 --out benchmarks/results/q12/v_fix.json
python -m benchmarks.q12_probe --dataset ml-1m --holdout validation --epochs 15 --seed 42 --out benchmarks/results/q12/v1m_fix.json
python -m benchmarks.q12_probe --dataset ml-100k --holdout validation --epochs 15 --seed 42 --set model.dropout=0.3 --out benchmarks/results/q12/v_drop03.json
python -m benchmarks.q12_probe --dataset synthetic --holdout test --epochs 20 --seed 44 --set model.negatives=impressions --out benchmarks/results/q12/ts_pointwise_s44.json
python -m benchmarks.q12_probe --dataset ml-1m --holdout test --epochs 15 --seed 42 --baselines --out benchmarks/results/q12/t1m_fix_s42.json
