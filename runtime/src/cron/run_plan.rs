//! The decisions of one cron run, as pure functions of the schedule, the policy, the
//! scheduled time and the clock: whether to run the handler, and which occurrence comes
//! next. Kept free of I/O so every rule is unit-tested here.

use chrono::{DateTime, TimeDelta, Utc};

use super::schedule::CronSchedule;

/// How a cron catches up and what it considers too late to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RunPolicy {
    /// `true`: the next occurrence follows the previous *scheduled* time (missed occurrences
    /// are caught up); `false`: it follows the moment the run starts (missed ones are dropped).
    pub(crate) calculate_next_from_previous: bool,
    /// A run that starts later than this after its scheduled time is skipped.
    pub(crate) skip_if_older_than: TimeDelta,
}

/// Whether a delivered run calls the user handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Call the handler.
    Run,
    /// Do not: the run is `age` late, more than `skip_if_older_than`.
    SkipStale { age: TimeDelta },
}

/// What a delivered run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RunPlan {
    /// Run or skip this occurrence.
    pub(crate) decision: Decision,
    /// The occurrence to schedule next (`None`: the schedule has no more occurrences).
    pub(crate) next: Option<DateTime<Utc>>,
}

impl RunPolicy {
    /// The plan of the run scheduled for `scheduled`, delivered at `now`.
    pub(crate) fn plan(
        &self,
        schedule: &CronSchedule,
        scheduled: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> RunPlan {
        let age = now - scheduled;
        let decision = if age > self.skip_if_older_than {
            Decision::SkipStale { age }
        } else {
            Decision::Run
        };
        // Never before the scheduled time itself, so the chain always moves forward even if
        // this runner's clock is behind the one that delivered the run.
        let after = if self.calculate_next_from_previous {
            // Occurrences at or before `now - skip_if_older_than` would only be delivered to be
            // skipped: jump straight to the first one that can still run.
            scheduled.max(self.staleness_horizon(now))
        } else {
            scheduled.max(now)
        };
        RunPlan {
            decision,
            next: schedule.next_after(after),
        }
    }

    /// The occurrence a (re-)arm schedules at `now`: the next one after the clock. If the
    /// chain is healthy this is the run it already has pending (or will schedule), so saving
    /// it again is a duplicate that stores nothing.
    pub(crate) fn arm(&self, schedule: &CronSchedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        schedule.next_after(now)
    }

    /// Occurrences at or before this instant are stale at `now`.
    fn staleness_horizon(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.checked_sub_signed(self.skip_if_older_than)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, h, mi, s).unwrap()
    }

    fn ms(millis: i64) -> TimeDelta {
        TimeDelta::milliseconds(millis)
    }

    fn policy(from_previous: bool, skip_secs: i64) -> RunPolicy {
        RunPolicy {
            calculate_next_from_previous: from_previous,
            skip_if_older_than: TimeDelta::seconds(skip_secs),
        }
    }

    fn every_second() -> CronSchedule {
        CronSchedule::parse("* * * * * *").unwrap()
    }

    fn every_minute() -> CronSchedule {
        CronSchedule::parse("0 * * * * *").unwrap()
    }

    #[test]
    fn an_on_time_run_runs_and_schedules_the_following_occurrence() {
        for from_previous in [true, false] {
            let plan = policy(from_previous, 60).plan(
                &every_minute(),
                at(10, 0, 0),
                at(10, 0, 0) + ms(40),
            );
            assert_eq!(plan.decision, Decision::Run);
            assert_eq!(
                plan.next,
                Some(at(10, 1, 0)),
                "from_previous = {from_previous}"
            );
        }
    }

    #[test]
    fn a_run_later_than_skip_if_older_than_is_skipped() {
        let plan = policy(false, 30).plan(&every_minute(), at(10, 0, 0), at(10, 0, 31));
        assert_eq!(
            plan.decision,
            Decision::SkipStale {
                age: TimeDelta::seconds(31)
            }
        );
        let exactly_at_limit = policy(false, 30).plan(&every_minute(), at(10, 0, 0), at(10, 0, 30));
        assert_eq!(exactly_at_limit.decision, Decision::Run);
    }

    #[test]
    fn a_skipped_run_still_schedules_a_next_occurrence() {
        let plan = policy(false, 1).plan(&every_minute(), at(10, 0, 0), at(10, 5, 0));
        assert!(matches!(plan.decision, Decision::SkipStale { .. }));
        assert_eq!(plan.next, Some(at(10, 6, 0)));
    }

    #[test]
    fn from_previous_catches_up_on_missed_occurrences_one_by_one() {
        // Delivered 3 minutes late, still within the 1 hour staleness limit.
        let plan = policy(true, 3600).plan(&every_minute(), at(10, 0, 0), at(10, 3, 20));
        assert_eq!(plan.decision, Decision::Run);
        assert_eq!(plan.next, Some(at(10, 1, 0)));
    }

    #[test]
    fn from_now_drops_missed_occurrences() {
        let plan = policy(false, 3600).plan(&every_minute(), at(10, 0, 0), at(10, 3, 20));
        assert_eq!(plan.decision, Decision::Run);
        assert_eq!(plan.next, Some(at(10, 4, 0)));
    }

    #[test]
    fn from_previous_jumps_over_occurrences_that_would_only_be_skipped() {
        // 10 minutes late with a 2 minute limit: 10:01 .. 10:08 are all stale already.
        let plan = policy(true, 120).plan(&every_minute(), at(10, 0, 0), at(10, 10, 0));
        assert!(matches!(plan.decision, Decision::SkipStale { .. }));
        assert_eq!(plan.next, Some(at(10, 9, 0)));
        // And 10:09 delivered now is within the limit.
        let next = policy(true, 120).plan(&every_minute(), at(10, 9, 0), at(10, 10, 0));
        assert_eq!(next.decision, Decision::Run);
    }

    #[test]
    fn the_next_occurrence_is_always_after_the_scheduled_one_even_with_a_slow_clock() {
        // Delivered by a runner whose clock is ahead; this runner's clock reads earlier.
        for from_previous in [true, false] {
            let plan = policy(from_previous, 60).plan(&every_second(), at(10, 0, 5), at(10, 0, 4));
            assert_eq!(
                plan.next,
                Some(at(10, 0, 6)),
                "from_previous = {from_previous}"
            );
        }
    }

    #[test]
    fn a_finished_schedule_has_no_next_occurrence() {
        let once = CronSchedule::parse("0 0 10 1 1 * 2025").unwrap();
        let plan = policy(true, 60).plan(&once, at(10, 0, 0), at(10, 0, 0));
        assert_eq!(plan.decision, Decision::Run);
        assert_eq!(plan.next, None);
    }

    #[test]
    fn arming_picks_the_next_occurrence_after_the_clock() {
        let p = policy(true, 60);
        assert_eq!(p.arm(&every_minute(), at(10, 0, 0)), Some(at(10, 1, 0)));
        assert_eq!(
            p.arm(&every_minute(), at(10, 0, 59) + ms(999)),
            Some(at(10, 1, 0))
        );
    }

    #[test]
    fn a_huge_staleness_limit_does_not_overflow() {
        let p = RunPolicy {
            calculate_next_from_previous: true,
            skip_if_older_than: TimeDelta::MAX,
        };
        let plan = p.plan(&every_minute(), at(10, 0, 0), at(11, 0, 0));
        assert_eq!(plan.decision, Decision::Run);
        assert_eq!(plan.next, Some(at(10, 1, 0)));
    }
}
