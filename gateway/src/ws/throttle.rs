//! A socket's frame rate: slow a client down, close only a flood.
//!
//! Every text frame takes a token from a bucket of `FRAMES_PER_SEC` a second
//! (bursts of twice that). A frame that finds the bucket empty is not handled:
//! it is refused and the client is told when to try again (`retry_after_ms`).
//! Refused frames queue up behind one another: the first is given the moment
//! the next token comes, the second the token after that, and so on, so a
//! client that resends each refused frame when it was told gets through on the
//! first retry, instead of every refused frame racing for the same token.
//!
//! Those promised slots are also the flood rule. A client that waits as told
//! never has more than the frames it sent before its first refusal arrived
//! outstanding; one that keeps sending pushes the promises further out. When a
//! socket has more than `RATE_FLOOD_FRAMES` refused frames outstanding — the
//! next slot lies more than that many token intervals ahead — it is closed
//! with 4013. A client sending at up to twice the rate never gets there (each
//! second frees as many slots as it asks for); one sending flat out does
//! within `RATE_FLOOD_FRAMES / FRAMES_PER_SEC` seconds.
//!
//! The bucket is governor's GCRA (`RateLimiter::direct`) on the std monotonic
//! clock: 40 bytes per socket, the same as the hand-written bucket it replaced
//! (governor's default quanta clock would make it 72). The promised slots add
//! one `Instant`.

use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

type Bucket = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<Instant>>;

pub struct Throttle {
    bucket: Bucket,
    /// The first slot not yet promised to a refused frame.
    promised: Instant,
}

/// What to do with one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the rate: refuse it; the client may send again after this long.
    RetryAfter(Duration),
    /// Over the rate with more than the allowed refusals outstanding: close (4013).
    Flood,
}

impl Throttle {
    pub fn new(per_sec: u32) -> Throttle {
        let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        let quota = Quota::per_second(rate).allow_burst(burst);
        Throttle {
            bucket: RateLimiter::direct_with_clock(quota, MonotonicClock),
            promised: Instant::now(),
        }
    }

    /// Takes a token for one frame; `flood_frames` is `RATE_FLOOD_FRAMES`.
    pub fn check(&mut self, flood_frames: u32) -> Verdict {
        let Err(not_until) = self.bucket.check() else {
            return Verdict::Pass;
        };
        let interval = not_until.quota().replenish_interval();
        let slot = self.promised.max(not_until.earliest_possible());
        self.promised = slot + interval;
        let wait = slot.saturating_duration_since(Instant::now());
        if wait > interval.saturating_mul(flood_frames) {
            Verdict::Flood
        } else {
            Verdict::RetryAfter(wait)
        }
    }
}

/// A wait as whole milliseconds, rounded up (a client that waits the rounded
/// time never comes back early), and at least 1.
pub fn millis_ceil(wait: Duration) -> u64 {
    u64::try_from(wait.as_micros().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(throttle: &mut Throttle, n: usize) -> Vec<Verdict> {
        (0..n).map(|_| throttle.check(1000)).collect()
    }

    #[test]
    fn a_burst_of_twice_the_rate_passes_then_frames_are_told_to_wait() {
        let mut throttle = Throttle::new(10);
        let verdicts = waits(&mut throttle, 25);
        assert!(verdicts[..20].iter().all(|v| *v == Verdict::Pass));
        assert!(
            verdicts[20..]
                .iter()
                .all(|v| matches!(v, Verdict::RetryAfter(_)))
        );
    }

    #[test]
    fn refused_frames_are_given_successive_slots() {
        let mut throttle = Throttle::new(10);
        waits(&mut throttle, 20);
        let slots: Vec<Duration> = waits(&mut throttle, 5)
            .into_iter()
            .map(|v| match v {
                Verdict::RetryAfter(wait) => wait,
                other => panic!("expected a wait, got {other:?}"),
            })
            .collect();
        // One token every 100 ms: the n-th refused frame waits about n × 100 ms.
        for (n, wait) in slots.iter().enumerate() {
            let expected = Duration::from_millis(100 * (n as u64 + 1));
            assert!(
                *wait <= expected && *wait + Duration::from_millis(20) >= expected,
                "slot {n}: {wait:?}, expected about {expected:?}"
            );
        }
    }

    #[test]
    fn a_client_that_keeps_sending_is_a_flood() {
        let mut throttle = Throttle::new(10);
        waits(&mut throttle, 20);
        let verdicts: Vec<Verdict> = (0..6).map(|_| throttle.check(5)).collect();
        assert!(
            verdicts[..5]
                .iter()
                .all(|v| matches!(v, Verdict::RetryAfter(_)))
        );
        assert_eq!(verdicts[5], Verdict::Flood);
    }

    #[test]
    fn waits_round_up_to_whole_milliseconds() {
        assert_eq!(millis_ceil(Duration::ZERO), 1);
        assert_eq!(millis_ceil(Duration::from_micros(1001)), 2);
        assert_eq!(millis_ceil(Duration::from_millis(20)), 20);
    }

    #[test]
    fn the_bucket_stays_small() {
        assert!(
            std::mem::size_of::<Throttle>() <= 56,
            "{}",
            std::mem::size_of::<Throttle>()
        );
    }
}
