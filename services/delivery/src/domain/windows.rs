//! Which delivery windows exist: a pure function of the date and the config.

use chrono::{DateTime, Days, Duration, NaiveDate, TimeZone, Utc};

use crate::config::WindowsConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// The windows bookable on a given day: from tomorrow (UTC) on, for
/// `horizon` (whole days).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    pub windows: Vec<Window>,
    /// Bookable windows start at or after this...
    pub from: DateTime<Utc>,
    /// ...and before this.
    pub until: DateTime<Utc>,
}

impl WindowPlan {
    pub fn for_day(today: NaiveDate, config: &WindowsConfig) -> Self {
        let midnight = |date: NaiveDate| {
            Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
        };
        let first_day = today + Days::new(1);
        let mut windows = Vec::new();
        let length = config.length_minutes();
        for day in 0..config.horizon_days() {
            let start_of_day = midnight(first_day + Days::new(u64::from(day)));
            for slot in 0..config.per_day {
                let offset = config.first_start_hour * 60 + slot * length;
                let starts_at = start_of_day + Duration::minutes(i64::from(offset));
                windows.push(Window {
                    starts_at,
                    ends_at: starts_at + Duration::minutes(i64::from(length)),
                });
            }
        }
        Self {
            windows,
            from: midnight(first_day),
            until: midnight(first_day + Days::new(u64::from(config.horizon_days()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_tomorrow_and_cover_the_horizon() {
        let config = WindowsConfig {
            per_day: 4,
            first_start_hour: 8,
            length: std::time::Duration::from_secs(2 * 3600),
            capacity: 10,
            horizon: std::time::Duration::from_secs(2 * 86_400),
        };
        let today = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        let plan = WindowPlan::for_day(today, &config);
        assert_eq!(plan.windows.len(), 8);
        let first = plan.windows[0];
        assert_eq!(first.starts_at.to_rfc3339(), "2027-01-01T08:00:00+00:00");
        assert_eq!(first.ends_at.to_rfc3339(), "2027-01-01T10:00:00+00:00");
        assert_eq!(
            plan.windows[3].ends_at.to_rfc3339(),
            "2027-01-01T16:00:00+00:00"
        );
        assert_eq!(
            plan.windows[4].starts_at.to_rfc3339(),
            "2027-01-02T08:00:00+00:00"
        );
        assert_eq!(plan.from.to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(plan.until.to_rfc3339(), "2027-01-03T00:00:00+00:00");
        assert!(
            plan.windows
                .iter()
                .all(|w| w.starts_at >= plan.from && w.starts_at < plan.until)
        );
    }
}
