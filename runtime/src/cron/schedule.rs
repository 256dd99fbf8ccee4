//! [`CronSchedule`]: a parsed cron expression and the arithmetic of its occurrences.
//!
//! Owns parsing and "when is the next occurrence" questions, always in UTC. It knows
//! nothing about the cluster; [`super::ClusterCron`] decides what to do with the answers.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use cruster_types::ClusterError;

/// The field layout every expression must follow, quoted in parse errors.
const FIELD_LAYOUT: &str = "sec min hour day-of-month month day-of-week [year]";

/// A cron schedule: 6 fields (`sec min hour day-of-month month day-of-week`) or 7 (with a
/// trailing `year`), evaluated in UTC.
///
/// Each field accepts `*`, a number, a list (`1,15`), a range (`9-17`), a step (`*/5`,
/// `10-50/10`), and for months and days of the week their English names (`May-Aug`,
/// `Mon,Wed,Fri`). Day-of-month and day-of-week also accept `?` for "any".
///
/// Occurrences fall on whole seconds. Parsing never panics: a bad expression is a
/// [`ClusterError::InvalidCronExpression`] that quotes it and says what is wrong.
///
/// ```
/// use chrono::{TimeZone, Utc};
/// use cruster::cron::CronSchedule;
///
/// // At second 0 of every fifth minute.
/// let schedule = CronSchedule::parse("0 */5 * * * *")?;
/// let now = Utc.with_ymd_and_hms(2025, 3, 1, 10, 7, 30).unwrap();
/// assert_eq!(
///     schedule.next_after(now),
///     Some(Utc.with_ymd_and_hms(2025, 3, 1, 10, 10, 0).unwrap()),
/// );
/// # Ok::<(), cruster::ClusterError>(())
/// ```
#[derive(Clone)]
pub struct CronSchedule {
    expression: String,
    schedule: cron::Schedule,
}

impl CronSchedule {
    /// Parses a 6- or 7-field cron expression (see the type docs for the syntax).
    ///
    /// # Errors
    /// [`ClusterError::InvalidCronExpression`] when the expression does not have 6 or 7
    /// fields, or a field is out of range or malformed.
    ///
    /// ```
    /// use cruster::cron::CronSchedule;
    /// use cruster::ClusterError;
    ///
    /// assert!(CronSchedule::parse("0 30 9 * * Mon-Fri").is_ok());
    /// let err = CronSchedule::parse("0 61 * * * *").unwrap_err();
    /// assert!(matches!(err, ClusterError::InvalidCronExpression { .. }));
    /// ```
    pub fn parse(expression: &str) -> Result<Self, ClusterError> {
        let invalid = |reason: String| ClusterError::InvalidCronExpression {
            expression: expression.to_string(),
            reason,
        };
        let fields = expression.split_whitespace().count();
        match fields {
            6 | 7 => {}
            5 => {
                return Err(invalid(format!(
                    "5 fields given, but cruster cron expressions start with a seconds \
                     field ({FIELD_LAYOUT}); put `0 ` in front to run at second 0"
                )))
            }
            n => {
                return Err(invalid(format!(
                    "expected 6 or 7 whitespace-separated fields ({FIELD_LAYOUT}), found {n}"
                )))
            }
        }
        let schedule = cron::Schedule::from_str(expression).map_err(|err| {
            invalid(format!(
                "{err} (fields are {FIELD_LAYOUT}; each is `*`, a number, a list `a,b`, a \
                 range `a-b` or a step `*/n`)"
            ))
        })?;
        Ok(CronSchedule {
            expression: expression.to_string(),
            schedule,
        })
    }

    /// The expression this schedule was parsed from.
    ///
    /// ```
    /// use cruster::cron::CronSchedule;
    /// let schedule = CronSchedule::parse("0 0 * * * *")?;
    /// assert_eq!(schedule.expression(), "0 0 * * * *");
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first occurrence strictly after `after`, or `None` if the schedule has no more
    /// occurrences (a year field entirely in the past, say).
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use cruster::cron::CronSchedule;
    ///
    /// let hourly = CronSchedule::parse("0 0 * * * *")?;
    /// let on_the_hour = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
    /// // Strictly after: an occurrence is never its own successor.
    /// assert_eq!(
    ///     hourly.next_after(on_the_hour),
    ///     Some(Utc.with_ymd_and_hms(2025, 1, 1, 13, 0, 0).unwrap()),
    /// );
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&after).next()
    }

    /// The occurrences strictly after `after`, in order.
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use cruster::cron::CronSchedule;
    ///
    /// let twice_a_minute = CronSchedule::parse("0,30 * * * * *")?;
    /// let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 10).unwrap();
    /// let next: Vec<_> = twice_a_minute.occurrences_after(start).take(3).collect();
    /// assert_eq!(next, vec![
    ///     Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 30).unwrap(),
    ///     Utc.with_ymd_and_hms(2025, 1, 1, 0, 1, 0).unwrap(),
    ///     Utc.with_ymd_and_hms(2025, 1, 1, 0, 1, 30).unwrap(),
    /// ]);
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn occurrences_after(
        &self,
        after: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.schedule.after(&after)
    }

    /// The next occurrence after the current time.
    ///
    /// ```
    /// use chrono::Utc;
    /// use cruster::cron::CronSchedule;
    ///
    /// let every_second = CronSchedule::parse("* * * * * *")?;
    /// let next = every_second.next_from_now().unwrap();
    /// assert!(next > Utc::now() - chrono::Duration::seconds(1));
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn next_from_now(&self) -> Option<DateTime<Utc>> {
        self.next_after(Utc::now())
    }

    /// Whether `instant` (to the second) is an occurrence of this schedule.
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use cruster::cron::CronSchedule;
    ///
    /// let noon = CronSchedule::parse("0 0 12 * * *")?;
    /// assert!(noon.includes(Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()));
    /// assert!(!noon.includes(Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 1).unwrap()));
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn includes(&self, instant: DateTime<Utc>) -> bool {
        self.schedule.includes(instant)
    }
}

impl FromStr for CronSchedule {
    type Err = ClusterError;

    fn from_str(expression: &str) -> Result<Self, Self::Err> {
        CronSchedule::parse(expression)
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronSchedule")
            .field(&self.expression)
            .finish()
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

impl Eq for CronSchedule {}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn six_and_seven_field_expressions_parse() {
        for expression in [
            "* * * * * *",
            "* * * * * * *",
            "0 */5 * * * * *",
            "0 30 9,12,15 1,15 May-Aug Mon,Wed,Fri 2030/2",
            "0 0 12 ? * *",
            "  0 0 12 * * *  ",
        ] {
            let schedule = CronSchedule::parse(expression);
            assert!(
                schedule.is_ok(),
                "{expression:?} should parse: {schedule:?}"
            );
        }
    }

    #[test]
    fn bad_expressions_are_invalid_cron_expression_errors() {
        for expression in [
            "",
            "   ",
            "*/5 * * * *",
            "* * * * * * * *",
            "0 61 * * * *",
            "60 * * * * *",
            "0 0 25 * * *",
            "0 0 0 32 * *",
            "0 0 0 * 13 *",
            "0 0 0 * * Funday",
            "a b c d e f",
            "0 0 0 * * * 1969-",
            "@daily",
        ] {
            match CronSchedule::parse(expression) {
                Err(ClusterError::InvalidCronExpression {
                    expression: quoted,
                    reason,
                }) => {
                    assert_eq!(quoted, expression);
                    assert!(!reason.is_empty());
                }
                other => panic!("{expression:?} should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn five_fields_get_a_hint_about_the_seconds_field() {
        let err = CronSchedule::parse("*/5 * * * *").unwrap_err();
        let ClusterError::InvalidCronExpression { reason, .. } = &err else {
            panic!("unexpected error {err:?}");
        };
        assert!(reason.contains("seconds"), "{reason}");
        assert!(err.to_string().contains("*/5 * * * *"), "{err}");
    }

    #[test]
    fn from_str_and_display_round_trip() {
        let schedule: CronSchedule = "0 0 * * * *".parse().unwrap();
        assert_eq!(schedule.to_string(), "0 0 * * * *");
        assert_eq!(schedule, CronSchedule::parse("0 0 * * * *").unwrap());
        assert!("nope".parse::<CronSchedule>().is_err());
    }

    #[test]
    fn next_after_is_strictly_after() {
        let every_second = CronSchedule::parse("* * * * * *").unwrap();
        let t = at(2025, 1, 1, 0, 0, 0);
        assert_eq!(every_second.next_after(t), Some(at(2025, 1, 1, 0, 0, 1)));
    }

    #[test]
    fn next_after_rounds_sub_second_instants_up_to_the_next_whole_second() {
        let every_second = CronSchedule::parse("* * * * * *").unwrap();
        let t = at(2025, 1, 1, 0, 0, 0) + chrono::Duration::milliseconds(500);
        assert_eq!(every_second.next_after(t), Some(at(2025, 1, 1, 0, 0, 1)));
    }

    #[test]
    fn next_after_crosses_minute_hour_day_month_and_year_boundaries() {
        let every_five_minutes = CronSchedule::parse("0 */5 * * * * *").unwrap();
        assert_eq!(
            every_five_minutes.next_after(at(2025, 12, 31, 23, 57, 12)),
            Some(at(2026, 1, 1, 0, 0, 0))
        );
        let month_end = CronSchedule::parse("0 0 0 31 * *").unwrap();
        // April has no 31st: the next one is in May.
        assert_eq!(
            month_end.next_after(at(2025, 4, 1, 0, 0, 0)),
            Some(at(2025, 5, 31, 0, 0, 0))
        );
        let leap_day = CronSchedule::parse("0 0 0 29 Feb *").unwrap();
        assert_eq!(
            leap_day.next_after(at(2025, 3, 1, 0, 0, 0)),
            Some(at(2028, 2, 29, 0, 0, 0))
        );
    }

    #[test]
    fn weekday_names_select_days_of_the_week() {
        let weekdays_at_nine = CronSchedule::parse("0 0 9 * * Mon-Fri").unwrap();
        // 2025-03-01 is a Saturday: the next weekday is Monday the 3rd.
        assert_eq!(
            weekdays_at_nine.next_after(at(2025, 3, 1, 8, 0, 0)),
            Some(at(2025, 3, 3, 9, 0, 0))
        );
    }

    #[test]
    fn a_schedule_whose_years_are_over_has_no_next_occurrence() {
        let past = CronSchedule::parse("0 0 0 1 1 * 2001").unwrap();
        assert_eq!(past.next_after(at(2025, 1, 1, 0, 0, 0)), None);
    }

    #[test]
    fn occurrences_after_enumerates_in_order() {
        let every_fifteen_seconds = CronSchedule::parse("*/15 * * * * *").unwrap();
        let got: Vec<_> = every_fifteen_seconds
            .occurrences_after(at(2025, 1, 1, 0, 0, 50))
            .take(4)
            .collect();
        assert_eq!(
            got,
            vec![
                at(2025, 1, 1, 0, 1, 0),
                at(2025, 1, 1, 0, 1, 15),
                at(2025, 1, 1, 0, 1, 30),
                at(2025, 1, 1, 0, 1, 45),
            ]
        );
    }

    #[test]
    fn includes_matches_occurrences_only() {
        let every_five_minutes = CronSchedule::parse("0 */5 * * * *").unwrap();
        assert!(every_five_minutes.includes(at(2025, 1, 1, 10, 35, 0)));
        assert!(!every_five_minutes.includes(at(2025, 1, 1, 10, 36, 0)));
    }
}
