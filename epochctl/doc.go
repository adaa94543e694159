// Package epochctl decides when the sender cuts its next epoch and at which
// compression level, so that the replica's lag stays below an RPO target.
//
// It owns the model of the replication loop — how many bytes an epoch of a
// given length changes, how long they take to reach the replica, what lag
// results — the estimates that feed the model, and the choice made from it.
// It is pure and deterministic: no IO, no goroutines, no clock. Time is
// always an argument (Observation's instants, Decide's now), so the same
// observations and the same now give the same decision, and the tests run
// hours of a simulated guest and link in a fraction of a second. It must
// not know how
// epochs are cut or sent: not the wire protocol, not QEMU, not the
// transport, not configuration files. The caller observes each committed
// epoch (Observe), asks for a plan (Decide), cuts at Decision.NextCut with
// Decision.Level, and shows Decision.Reason in its status and logs. Levels
// have the values and names of the sender's compression levels (none, fast,
// default, better), so they convert with a type conversion.
//
// # Timeline and lag
//
// One epoch is in flight at a time. Epoch k is cut at c_k and its commit is
// acknowledged at m_k = c_k + E_k, where E_k is its cut-to-commit time; the
// next cut comes no earlier than that commit, c_{k+1} ≥ m_k. Epoch k+1
// covers the guest time T_{k+1} = c_{k+1} − c_k. The lag at time t is
// t − c_j for the last epoch j committed by t, so it is a sawtooth: just
// after m_{k+1} it is m_{k+1} − c_{k+1} = E_{k+1}, and just before it,
// when the replica still holds epoch k, it peaks at
//
//	m_{k+1} − c_k = T_{k+1} + E_{k+1}.
//
// The peak lag of a plan with interval T is therefore L(T) = T + E(T): the
// interval the next epoch covers plus the time to ship it. If the previous
// epoch overran the plan (E_k > T), the next cut is at once and covers
// T' = now − c_k; the decision's PredictedLag is T' + E(T') with T' the gap
// from the last cut to NextCut.
//
// # Model
//
// Times in seconds, sizes in bytes, for an interval T and a level ℓ:
//
//	C(T)    = a·T^b                 changed bytes per epoch, b ∈ [0.25, 1]
//	R(T)    = (1 − d)·C(T)          raw bytes after dedup, d = dedup ratio
//	W_ℓ(T)  = r_ℓ·R(T)              wire bytes, r_ℓ = wire/raw at level ℓ
//	P_ℓ(T)  = R(T)/k_ℓ              compression CPU seconds, k_ℓ = raw bytes per CPU second
//	S_ℓ(T)  = max(W_ℓ(T)/g, P_ℓ(T)) send time: compression streams into the link
//	E_ℓ(T)  = F + S_ℓ(T)            cut to commit, F = fixed overhead per epoch
//	L_ℓ(T)  = T + E_ℓ(T)            peak lag
//	busy    = E_ℓ(T)/T              fraction of the time the sender is at work
//
// The changed-bytes curve. Overwrites coalesce: a page rewritten ten times
// in an epoch is sent once, so C grows sub-linearly with T (b < 1) up to the
// working set, and linearly (b = 1) for data never rewritten. No single
// closed form fits every guest, so C is a power law fitted locally. Epochs
// are binned by interval (bins a factor 1.2 wide), each bin holding EWMAs
// of ln T and ln C, a sample count and the guest time it was last updated.
// C at T comes from a weighted least-squares line through (ln T_i, ln C_i)
// of the bins, each weighted by
//
//	w_i = 2^(−age_i/CurveHalfLife) · min(n_i, 4)/4 · exp(−((ln T_i − ln T)/ln 2)²/2)
//
// (recency in guest time, samples, distance from T), its slope pulled
// towards 1 by a ridge term: b = (Sxy + 0.03)/(Sxx + 0.03), clamped to
// [0.25, 1]. So one point, or points at a single interval, give the linear
// model, and only intervals spread around T teach a smaller b. Beyond the
// longest interval observed (among bins not yet stale) the curve continues
// linearly from there: coalescing that was never seen is never assumed.
// Below the shortest it follows the local power law, which errs high (more
// bytes per second) when b < 1; from a single long epoch (the one after
// the first, full copy) the linear model errs low, and the next, shorter
// epoch corrects it. Once the curve has four samples, a new one more than
// ×/÷4 from the prediction is clipped to it before it enters the curve,
// and one beyond the longest interval seen is clipped to the linear growth
// from there (an epoch longer than any before that changed more than
// proportionally more is a resync or a burst, not coalescing): one full
// resync does not wreck the curve, and a real change of workload gets
// through in a few epochs. Epochs with no interval (the first, full one)
// do not enter it.
//
// The other estimates:
//
//   - g, goodput: the wire bytes over the send time of each epoch, smoothed
//     as an EWMA of ln g with factor AlphaDown (0.6) for samples below the
//     estimate and AlphaUp (0.25) above it, each sample clipped to ×/÷8 of
//     the estimate. Samples where the link did not set the pace — CPU time
//     ≥ 90% of the send time, under 1 MiB, or under 0.2 s — are lower
//     bounds: they may raise g, never lower it. Without a send time, the
//     cut-to-commit time less F (at least half of it) stands in. The
//     planning goodput is min(g, BandwidthCap), so no plan counts on more
//     than the cap, whatever the sender measured.
//   - F, the fixed overhead: the median over the last 9 epochs of
//     (Committed − Cut) − SendTime (pause, reading, commit round trip).
//   - d: an EWMA of DedupedBytes/ChangedBytes; r_ℓ: an EWMA of
//     WireBytes/(ChangedBytes − DedupedBytes) over the epochs sent at ℓ;
//     k_ℓ: an EWMA of ln((ChangedBytes − DedupedBytes)/CPUTime) likewise.
//     Epochs under 64 KiB do not count. A level never used is predicted
//     from the nearest level that was, scaled by fixed priors (wire/raw
//     0.55, 0.48, 0.43 and 400, 120, 35 MB per CPU second for fast,
//     default, better), so that it can be tried; its own epochs then
//     replace the guess. Level none is wire/raw 1 until measured (framing)
//     and costs no CPU. If no epoch reports CPU
//     time, no level does (P = 0): a CPU-bound sender that does not report
//     its CPU time looks like a slow link, and the controller cannot tell.
//
// # Choice of interval
//
// The candidate intervals are MinInterval, MaxInterval and the values of
// two significant digits between them (5.3 s, 18 s, 240 s), so plans read
// well and timing jitter does not creep into the hysteresis. They are all
// evaluated: when C(T)/T falls with T (coalescing), busy falls and L rises
// with T, and the scan finds the same plan a bisection would; when it does
// not (a curve learnt across a change of workload), the scan is not misled.
// For each level:
//
//  1. T₁ = the smallest candidate T with
//     E(T) ≤ TargetBusy·T (0.8) and P(T) ≤ MaxCPUShare·T (0.5). This is the
//     least lag that leaves the sender headroom for bursts: MinInterval
//     when the link has headroom (kind headroom), longer when the link or
//     the overhead needs coalescing (link-bound) or compression needs it
//     (cpu-bound). If L(T₁) ≤ goal = (1 − Margin)·RPOTarget, that is the
//     plan.
//  2. Else T₂ = the smallest T with E(T) ≤ MaxBusy·T (0.95) (and the CPU
//     bound). If L(T₂) ≤ goal, the plan is the longest T in [T₂, T₁] (or
//     [T₂, MaxInterval]) still meeting the goal: the target is kept with
//     as much headroom as it allows (tight).
//  3. Else, if T₂ exists, the target cannot be met: the plan is T₂, the
//     least lag on offer (lag-breach).
//  4. Else no interval keeps the sender within MaxBusy. The plan is the
//     least busy interval, normally MaxInterval, which coalesces the most.
//     If even there E(T) ≥ T the link cannot keep up at all (unstable):
//     wire bytes per second of guest time w = W(T)/T exceed what the sender
//     ships, and each second brings E(T)/T − 1 ≈ w/g − 1 seconds of
//     sending more than a second carries (LagGrowth). That backlog grows
//     without bound, and the lag at each commit with it; the lag itself
//     never grows faster than the clock, one second per second while
//     nothing commits. Otherwise the sender barely keeps up (overloaded). If
//     the level's compression needs more than MaxCPUShare at every
//     interval, it is unusable (cpu-overload).
//
// Breach is reported when the plan decided (after the hysteresis below)
// is one of the kinds of 3 and 4, or when the predicted lag of the next
// commit exceeds the goal (after an overrun, or from the epoch in flight).
// It comes from the estimates at each decision, so it is raised as soon as
// the rates say the target will be missed, before the lag has crossed it.
//
// # Between commits
//
// The estimates above change only when an epoch commits; a link that slows
// in the middle of a long epoch would go unnoticed until then. So the
// caller reports the epoch in flight as it goes (ObserveProgress: its
// cut, the changed bytes sent and left, the wire bytes sent, the send
// time, and the instant of the report), and Decide between commits
// predicts from it:
//
//	g_live  = wire bytes over the latest 5 s of the transfer (all of it
//	          when shorter; unknown under 1 MiB and 5 s)
//	left    = changed bytes left · wire/changed so far (the model's ratio
//	          under 64 KiB)
//	m_k     = now + left/g_live                    its commit
//	peak_k  = m_k − c_{k−1}                        the lag just before it
//
// g_live enters the goodput estimate as an epoch's sample would (bad news
// with AlphaDown), for the plan of the next epoch, which is cut no
// earlier than m_k and peaks at gap + E(gap) with gap = c_{k+1} − c_k.
// The predicted lag is the greater of the two peaks and either above the
// goal is a breach. A transfer that moves nothing for 5 s predicts no
// commit at all: a breach. The next Observe ends the flight.
//
// # Choice of level
//
// Each allowed level gets its plan; plans rank by kind (within TargetBusy,
// then tight, then lag breach, then growth, then unusable) and within a
// rank by predicted lag (by growth rate for unstable ones). With best the
// top plan, and levels ordered by CPU cost (none < fast < default <
// better):
//
//   - the current level (the one the last epoch used) stays while its plan
//     has best's rank and a lag within 1 + 2·LevelGain (1.2) of best's,
//     unless a cheaper level comes within 1 + LevelGain (1.1): then the
//     cheapest such level is taken;
//   - otherwise the cheapest level of best's rank within 1 + LevelGain of
//     best is taken.
//
// So CPU is spent only when it buys at least 10% less lag, a stronger
// level is adopted when the current one falls 20% behind, and the band
// between the two thresholds keeps the choice from flapping. On a fast
// link every level reaches MinInterval with a small send time and the
// cheapest wins; on a slow link the bytes saved shorten the interval and
// the lag, and a stronger level wins unless its CPU time, which counts in
// S and is capped by MaxCPUShare, eats the gain.
//
// # Stability of the plan
//
// The new interval moves at most ×/÷ StepFactor (2) from the interval the
// sender ran last (rounded to the grid), and does not move at all within
// Deadband (10%) of it, unless only the larger step meets the goal. The
// interval held must be no worse a plan than the one chosen (within the
// goal and MaxBusy when that one meets the goal, of no graver kind of
// breach when it does not), and the decision's kind, breach and reason are
// those of the interval held or stepped to, classified by the rules
// above, not of the interval the scan found. Both
// references, the interval and the level, are what the last observation
// says the sender ran, so Decide has no state of its own and may be asked
// any number of times. Bad news about the link is believed faster than
// good news (AlphaDown > AlphaUp). After the link returns the intervals
// shrink by at most half per epoch, and the breach clears as soon as a plan
// meets the goal.
//
// Predict evaluates the model at any interval and level, for status pages
// and what-if questions.
//
// A consistency group is planned as one VM (Group): its members' epochs are
// summed into one observation (Combine), since their bytes share one link
// and the group's recovery point is its oldest member's.
package epochctl
