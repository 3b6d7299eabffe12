//! Typed configuration: defaults, then the TOML file named by
//! `APP_CONFIG_FILE`, then `APP__SECTION__KEY` environment variables (`__`
//! separates sections). Every duration is written one way, with a unit
//! (see [`duration`]); keys renamed when their unit left the name still
//! load for a release (see [`load_renamed`]).

use std::fmt;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Value},
};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

/// Environment variable naming an optional TOML config file.
pub const CONFIG_FILE_ENV: &str = "APP_CONFIG_FILE";

/// Loads `T` from its defaults, then the file named by `APP_CONFIG_FILE` (if
/// set), then `APP__...` environment variables.
pub fn load<T>() -> Result<T, Box<figment::Error>>
where
    T: Serialize + DeserializeOwned + Default,
{
    load_renamed(&[])
}

/// [`load`], also accepting the old names of renamed duration keys, for a
/// release: each of `renamed` is an old dotted key whose name ended in its
/// unit (`kafka.produce_timeout_ms`, `auth.token_ttl_seconds`, `_minutes`,
/// `_days`), now the same key without it (`kafka.produce_timeout`). A value
/// given under the old key keeps its meaning: a number under it is read in
/// the old key's unit (`token_ttl_seconds = 3600` is `token_ttl = "3600s"`).
/// Setting both names of one key is an error. A key not listed here (and
/// not in `T`) is refused, as before, by `deny_unknown_fields`.
///
/// Not `#[serde(alias)]`: the defaults are a layer of their own, so an alias
/// given in the file or environment would meet the default under the new
/// name and fail as a duplicate field; and an alias cannot say that a
/// number under it is in seconds.
pub fn load_renamed<T>(renamed: &[&str]) -> Result<T, Box<figment::Error>>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut given = Figment::new();
    if let Ok(path) = std::env::var(CONFIG_FILE_ENV) {
        given = given.merge(Toml::file_exact(path));
    }
    given = given.merge(Env::prefixed("APP__").split("__"));
    let defaults = Figment::from(Serialized::defaults(T::default()));
    let old: Vec<&str> = renamed
        .iter()
        .copied()
        .filter(|key| given.contains(key))
        .collect();
    if old.is_empty() {
        // Extracted from the providers themselves, so an error names the
        // file or variable the bad value came from.
        return defaults.merge(given).extract().map_err(Box::new);
    }
    let mut settings: Dict = given.extract().map_err(Box::new)?;
    for key in old {
        let new = rename(&mut settings, key).map_err(|e| Box::new(e.into()))?;
        tracing::warn!(
            old = key,
            new,
            "configuration key renamed: the old name is read for this release only"
        );
    }
    defaults
        .merge(Serialized::defaults(settings))
        .extract()
        .map_err(Box::new)
}

/// The units a renamed key's name could end in, and how [`duration`] writes
/// them.
const RENAMED_UNITS: [(&str, &str); 4] = [
    ("_ms", "ms"),
    ("_seconds", "s"),
    ("_minutes", "m"),
    ("_days", "d"),
];

/// Moves the old dotted `key` of `settings` to its new name, a number in
/// the old unit becoming a duration with that unit; returns the new key.
fn rename(settings: &mut Dict, key: &str) -> Result<String, String> {
    let (new_key, unit) = RENAMED_UNITS
        .iter()
        .find_map(|(suffix, unit)| Some((key.strip_suffix(suffix)?, *unit)))
        .ok_or_else(|| format!("renamed key {key} names no unit"))?;
    let mut path: Vec<&str> = key.split('.').collect();
    let old_name = path.pop().unwrap_or_default();
    let new_name = new_key.rsplit('.').next().unwrap_or_default();
    let mut section = settings;
    for name in path {
        match section.get_mut(name) {
            Some(Value::Dict(_, dict)) => section = dict,
            _ => return Err(format!("{key}: {name} is not a section")),
        }
    }
    if section.contains_key(new_name) {
        return Err(format!(
            "{key} and {new_key} are the same setting (renamed): set only {new_key}"
        ));
    }
    let value = section.remove(old_name).unwrap_or(Value::from(""));
    let number = match &value {
        Value::Num(_, number) => number.to_u128_lossy(),
        Value::String(_, text) => text.trim().parse().ok(),
        _ => None,
    };
    let value = match number {
        Some(n) => Value::from(format!("{n}{unit}")),
        None => value,
    };
    section.insert(new_name.to_owned(), value);
    Ok(new_key.to_owned())
}

/// Durations in config: a number with a unit, `"250ms"`, `"5s"`, `"2m"`,
/// `"1h"` or `"7d"`; a bare number is milliseconds. Serialized in the
/// largest unit that writes it exactly (`"10s"`, `"7d"`, `"250ms"`). Use on
/// a `Duration` field with `#[serde(with = "commerce_base::config::duration")]`.
///
/// Strings with units rather than integers in a unit named by the key
/// (`_ms`, `_seconds`): one rule for every key, values that read as what
/// they mean (`"7d"`, not `604800000`), and no key to rename when a setting
/// needs a finer or coarser unit. The consumer's settings were written so
/// already.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Milliseconds per unit, largest first.
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];

    /// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"7d"`, or a number of
    /// milliseconds.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        let unit = unit.trim();
        let millis = match unit {
            "" => 1,
            unit => UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, millis)| *millis)
                .ok_or_else(|| format!("invalid duration unit {unit:?} in {text:?}"))?,
        };
        Ok(Duration::from_millis(number.saturating_mul(millis)))
    }

    /// `duration` in the largest unit that writes it exactly (below a
    /// millisecond is dropped).
    pub fn format(duration: Duration) -> String {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let (unit, size) = UNITS
            .iter()
            .find(|(_, size)| millis != 0 && millis % size == 0)
            .copied()
            .unwrap_or(("ms", 1));
        format!("{}{unit}", millis / size)
    }

    pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*duration))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
            Raw::Text(text) => parse(&text).map_err(D::Error::custom),
        }
    }
}

/// A string that never prints (passwords, keys, database URLs with
/// credentials).
#[derive(Clone, Default, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// The items of a comma-separated list (`"a:1, b:2"`), trimmed, empty ones
/// dropped.
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        name: String,
        timeouts: Timeouts,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Timeouts {
        #[serde(with = "duration")]
        connect: Duration,
        #[serde(with = "duration")]
        token_ttl: Duration,
        #[serde(with = "duration")]
        horizon: Duration,
    }

    impl Default for Settings {
        fn default() -> Self {
            Self {
                name: "x".into(),
                timeouts: Timeouts {
                    connect: Duration::from_secs(2),
                    token_ttl: Duration::from_secs(3600),
                    horizon: Duration::from_secs(7 * 86_400),
                },
            }
        }
    }

    const RENAMED: &[&str] = &[
        "timeouts.connect_ms",
        "timeouts.token_ttl_seconds",
        "timeouts.horizon_days",
    ];

    #[test]
    fn durations_parse_with_units() {
        use duration::parse;
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse(" 40 "), Ok(Duration::from_millis(40)));
        assert!(parse("fast").is_err());
        assert!(parse("5 weeks").is_err());
        assert!(parse("-5s").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn durations_are_written_in_their_largest_exact_unit() {
        use duration::format;
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_secs(300)), "5m");
        assert_eq!(format(Duration::from_secs(7200)), "2h");
        assert_eq!(format(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format(Duration::ZERO), "0ms");
        for text in ["250ms", "1500ms", "30s", "5m", "2h", "7d", "0ms"] {
            assert_eq!(format(duration::parse(text).unwrap()), text);
        }
    }

    #[test]
    fn new_keys_take_durations_with_units_or_milliseconds() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__TIMEOUTS__CONNECT", "250ms");
            jail.set_env("APP__TIMEOUTS__TOKEN_TTL", "1500");
            let settings: Settings = load_renamed(RENAMED).expect("loads");
            assert_eq!(settings.timeouts.connect, Duration::from_millis(250));
            assert_eq!(settings.timeouts.token_ttl, Duration::from_millis(1500));
            assert_eq!(settings.timeouts.horizon, Duration::from_secs(7 * 86_400));
            Ok(())
        });
    }

    #[test]
    fn an_old_ms_key_loads_with_its_meaning_and_only_as_a_renamed_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__TIMEOUTS__CONNECT_MS", "250");
            let settings: Settings = load_renamed(RENAMED).expect("the old key loads");
            assert_eq!(settings.timeouts.connect, Duration::from_millis(250));
            assert_eq!(settings.timeouts.token_ttl, Duration::from_secs(3600));
            assert_eq!(settings.name, "x");
            // Without the rename the old key is unknown, and refused.
            let error = load::<Settings>().expect_err("unknown without the rename");
            assert!(error.to_string().contains("connect_ms"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn old_keys_in_other_units_keep_their_unit() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "app.toml",
                "name = \"y\"\n[timeouts]\ntoken_ttl_seconds = 60\nhorizon_days = \"3\"\n",
            )?;
            jail.set_env(CONFIG_FILE_ENV, "app.toml");
            let settings: Settings = load_renamed(RENAMED).expect("loads");
            assert_eq!(settings.name, "y");
            assert_eq!(settings.timeouts.token_ttl, Duration::from_secs(60));
            assert_eq!(settings.timeouts.horizon, Duration::from_secs(3 * 86_400));
            assert_eq!(settings.timeouts.connect, Duration::from_secs(2));
            Ok(())
        });
    }

    #[test]
    fn an_old_key_may_carry_a_unit_but_not_come_with_its_new_name() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__TIMEOUTS__TOKEN_TTL_SECONDS", "2m");
            let settings: Settings = load_renamed(RENAMED).expect("loads");
            assert_eq!(settings.timeouts.token_ttl, Duration::from_secs(120));
            jail.set_env("APP__TIMEOUTS__TOKEN_TTL", "5s");
            let error = load_renamed::<Settings>(RENAMED).expect_err("both names");
            assert!(
                error.to_string().contains("set only timeouts.token_ttl"),
                "{error}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_serde_alias_alone_would_meet_the_default_as_a_duplicate() {
        // Why `load_renamed` renames instead of `#[serde(alias)]`.
        #[derive(Debug, Serialize, Deserialize)]
        struct Aliased {
            #[serde(alias = "connect_ms", with = "duration")]
            connect: Duration,
        }
        impl Default for Aliased {
            fn default() -> Self {
                Self {
                    connect: Duration::from_secs(1),
                }
            }
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__CONNECT_MS", "250");
            let error = load::<Aliased>().expect_err("duplicate field");
            assert!(error.to_string().contains("duplicate"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("pw")), "Secret(***)");
    }

    #[test]
    fn lists_split_on_commas() {
        assert_eq!(split_list(" a:1, b:2,,"), vec!["a:1", "b:2"]);
        assert!(split_list("").is_empty());
    }
}
