//! The pure arithmetic of shared rate limits: GCRA (the generic cell rate algorithm) over up to two
//! lanes, a pause, and an adaptive slow-down. The embedded store runs these functions under a mutex;
//! the Redis store runs the same steps in one Lua script (`RATE_TAKE`, `RATE_THROTTLE` in
//! `redis.rs`), so every replica sees one state per key. Times are Unix milliseconds, as `f64` (Lua's
//! only number type: exact for integers below 2^53).
//!
//! GCRA keeps one number per lane, the theoretical arrival time (TAT) of the next unit: a take of
//! `cost` units at `now` is allowed when `max(tat, now) + cost * interval - now <= burst * interval`,
//! and then moves the TAT there. A refused take changes nothing, so waiters never push the TAT ahead.
//! Several lanes are taken all or none (an upload call spends a call and an upload).
//!
//! A take can be given back (`give_back`): an upload admitted and then refused before it reached Box
//! (a later gate said no, its client left) returns what it took, so a refusal never costs the key or
//! the principal anything.

/// What a key holds (in Redis: a hash with fields `t0`, `t1`, `p`, `sa`, `st`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateState {
    /// Theoretical arrival time of each lane.
    pub tat: [f64; 2],
    /// No take is allowed before this (Box said `Retry-After`).
    pub paused_until: f64,
    /// When the rate was last lowered, and to what fraction of the configured rate (0: never).
    pub slowed_at: f64,
    pub slowed_to: f64,
}

/// One lane of a take: its interval at the full rate (ms per unit), its burst (units that may go at
/// once) and what this take costs (units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lane {
    pub interval_ms: f64,
    pub burst: f64,
    pub cost: f64,
}

/// A take over lanes 0 and 1 (either may be absent), all or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateTake {
    pub now_ms: u64,
    pub lanes: [Option<Lane>; 2],
    /// How long the rate takes to climb from 0 back to the full rate after a slow-down (linear);
    /// 0: the lanes are never slowed (per-key quotas).
    pub recovery_ms: u64,
}

/// Box said 429: nothing is taken before `until_ms`, and the rate is halved (at most once per
/// `grace_ms`, so the 429s of one burst, from every replica, count once), never below `floor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateThrottle {
    pub now_ms: u64,
    pub until_ms: u64,
    pub recovery_ms: u64,
    pub grace_ms: u64,
    pub floor: f64,
}

/// The fraction of the configured rate in force at `now`.
pub fn factor(state: &RateState, now: f64, recovery_ms: u64) -> f64 {
    if state.slowed_to <= 0.0 || recovery_ms == 0 {
        return 1.0;
    }
    (state.slowed_to + (now - state.slowed_at).max(0.0) / recovery_ms as f64).min(1.0)
}

/// Takes the lanes if all allow it: 0, and the state moved on; else the milliseconds to wait before
/// asking again (at least 1), and the state untouched.
pub fn take(state: &mut RateState, take: &RateTake) -> u64 {
    let now = take.now_ms as f64;
    if state.paused_until > now {
        return (state.paused_until - now).ceil().max(1.0) as u64;
    }
    let f = factor(state, now, take.recovery_ms);
    let mut next = state.tat;
    let mut wait: f64 = 0.0;
    for (i, lane) in take.lanes.iter().enumerate() {
        let Some(lane) = lane else { continue };
        let interval = lane.interval_ms / f;
        // A take larger than the burst could never pass: it is asked for as the whole burst.
        let cost = lane.cost.min(lane.burst);
        let tat = state.tat[i].max(now) + cost * interval;
        // Less than a microsecond over is rounding (intervals are fractions), not a refusal.
        let over = tat - now - lane.burst * interval;
        if over > 1e-3 {
            wait = wait.max(over);
        }
        next[i] = tat;
    }
    if wait > 0.0 {
        return wait.ceil().max(1.0) as u64;
    }
    state.tat = next;
    0
}

/// Undoes a take made earlier with the same lanes: each lane's TAT moves back by what the take cost
/// (at the rate in force now), never before `now` (units a take spent from an idle lane come back as
/// the idle lane's full burst, which is where it would be anyway). A pause stays.
pub fn give_back(state: &mut RateState, take: &RateTake) {
    let now = take.now_ms as f64;
    let f = factor(state, now, take.recovery_ms);
    for (i, lane) in take.lanes.iter().enumerate() {
        let Some(lane) = lane else { continue };
        if state.tat[i] > now {
            let cost = lane.cost.min(lane.burst);
            state.tat[i] = (state.tat[i] - cost * lane.interval_ms / f).max(now);
        }
    }
}

/// Applies a 429: the pause, and (once per grace) the halved rate.
pub fn throttle(state: &mut RateState, t: &RateThrottle) {
    let now = t.now_ms as f64;
    state.paused_until = state.paused_until.max(t.until_ms as f64);
    if state.slowed_to > 0.0 && now - state.slowed_at < t.grace_ms as f64 {
        return;
    }
    state.slowed_to = (factor(state, now, t.recovery_ms) / 2.0).max(t.floor);
    state.slowed_at = now;
}

/// How long a state must be kept after `now` before forgetting it changes nothing.
pub fn keep_ms(state: &RateState, now_ms: u64, recovery_ms: u64) -> u64 {
    let now = now_ms as f64;
    let until = state.tat[0]
        .max(state.tat[1])
        .max(state.paused_until)
        .max(state.slowed_at + recovery_ms as f64);
    (until - now).max(0.0).ceil() as u64 + 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(per_minute: f64, burst: f64) -> Lane {
        Lane {
            interval_ms: 60_000.0 / per_minute,
            burst,
            cost: 1.0,
        }
    }

    fn at(now_ms: u64, lanes: [Option<Lane>; 2]) -> RateTake {
        RateTake {
            now_ms,
            lanes,
            recovery_ms: 60_000,
        }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut s = RateState::default();
        let calls = lane(60.0, 3.0); // one a second, three at once
        for _ in 0..3 {
            assert_eq!(take(&mut s, &at(1_000_000, [Some(calls), None])), 0);
        }
        let wait = take(&mut s, &at(1_000_000, [Some(calls), None]));
        assert_eq!(wait, 1000);
        assert_eq!(take(&mut s, &at(1_000_999, [Some(calls), None])), 1);
        assert_eq!(take(&mut s, &at(1_001_000, [Some(calls), None])), 0);
        // Over a long run, no more than rate x time + burst.
        let mut s = RateState::default();
        let mut granted = 0;
        for ms in (0..600_000u64).step_by(7) {
            if take(&mut s, &at(10_000_000 + ms, [Some(calls), None])) == 0 {
                granted += 1;
            }
        }
        assert!((600..=603).contains(&granted), "{granted}");
    }

    #[test]
    fn lanes_are_taken_all_or_none() {
        let mut s = RateState::default();
        let calls = lane(600.0, 10.0);
        let uploads = lane(6.0, 1.0);
        assert_eq!(take(&mut s, &at(5_000, [Some(calls), Some(uploads)])), 0);
        let before = s;
        // The upload lane is spent: nothing is taken from the calls lane either.
        assert_eq!(take(&mut s, &at(5_000, [Some(calls), Some(uploads)])), 10_000);
        assert_eq!(s, before);
        // Calls alone still go.
        assert_eq!(take(&mut s, &at(5_000, [Some(calls), None])), 0);
    }

    #[test]
    fn costs_and_a_cost_beyond_the_burst() {
        let mut s = RateState::default();
        // 1,000 bytes a day, all of it at once.
        let day = Lane {
            interval_ms: 86_400.0,
            burst: 1000.0,
            cost: 600.0,
        };
        assert_eq!(take(&mut s, &at(0, [Some(day), None])), 0);
        let wait = take(&mut s, &at(0, [Some(day), None]));
        assert_eq!(wait, 200 * 86_400, "200 more bytes must come back first");
        let huge = Lane { cost: 5000.0, ..day };
        assert!(take(&mut RateState::default(), &at(0, [Some(huge), None])) == 0);
    }

    #[test]
    fn a_take_given_back_is_there_again() {
        let mut s = RateState::default();
        let uploads = lane(3.0, 3.0); // three a minute, all at once
        let take_at = |now| at(now, [Some(uploads), None]);
        for _ in 0..3 {
            assert_eq!(take(&mut s, &take_at(1_000_000)), 0);
        }
        assert!(take(&mut s, &take_at(1_000_000)) > 0, "spent");
        // Two refused uploads give theirs back: two more go at once, then none.
        give_back(&mut s, &take_at(1_000_100));
        give_back(&mut s, &take_at(1_000_100));
        assert_eq!(take(&mut s, &take_at(1_000_200)), 0);
        assert_eq!(take(&mut s, &take_at(1_000_200)), 0);
        assert!(take(&mut s, &take_at(1_000_200)) > 0);
        // Giving back more than was taken never lends the future: an idle lane stays as it was.
        let mut idle = RateState::default();
        give_back(&mut idle, &take_at(5_000_000));
        assert_eq!(idle, RateState::default());
        for _ in 0..3 {
            assert_eq!(take(&mut idle, &take_at(5_000_000)), 0);
        }
        assert!(take(&mut idle, &take_at(5_000_000)) > 0, "no more than the burst");
    }

    #[test]
    fn a_429_pauses_then_halves_and_the_rate_recovers() {
        let mut s = RateState::default();
        let calls = lane(60.0, 1.0);
        let t = |now, until| RateThrottle {
            now_ms: now,
            until_ms: until,
            recovery_ms: 60_000,
            grace_ms: 5_000,
            floor: 0.1,
        };
        throttle(&mut s, &t(100_000, 103_000));
        assert_eq!(take(&mut s, &at(100_000, [Some(calls), None])), 3_000);
        assert_eq!(factor(&s, 100_000.0, 60_000), 0.5);
        // A second 429 of the same burst does not halve again.
        throttle(&mut s, &t(101_000, 102_000));
        assert!((factor(&s, 101_000.0, 60_000) - 0.5 - 1.0 / 60.0).abs() < 1e-9);
        assert_eq!(s.paused_until, 103_000.0);
        // At half rate the interval doubles.
        assert_eq!(take(&mut s, &at(103_000, [Some(calls), None])), 0);
        let wait = take(&mut s, &at(103_000, [Some(calls), None]));
        assert!((1_800..=2_000).contains(&wait), "{wait}");
        // Recovered after half the recovery time; never below the floor.
        assert_eq!(factor(&s, 130_001.0, 60_000), 1.0);
        for i in 0..20 {
            throttle(&mut s, &t(200_000 + i * 10_000, 0));
        }
        assert!(factor(&s, 390_000.0, 60_000) >= 0.1);
        assert!(keep_ms(&s, 390_000, 60_000) >= 60_000);
    }
}
