//! The domain vocabulary both sides use: result codes, ids, and how step
//! results combine into a build result. Codes and ordering are Buildbot's, so
//! API clients written for Buildbot read them unchanged.

use std::collections::BTreeMap;
use std::fmt;

use serde::de;
use serde::{Deserialize, Deserializer, Serialize};

/// The outcome of a step, a build or a build request, with Buildbot's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Results {
    Success = 0,
    Warnings = 1,
    Failure = 2,
    Skipped = 3,
    Exception = 4,
    Retry = 5,
    Cancelled = 6,
}

impl Results {
    pub const ALL: [Results; 7] = [
        Results::Success,
        Results::Warnings,
        Results::Failure,
        Results::Skipped,
        Results::Exception,
        Results::Retry,
        Results::Cancelled,
    ];

    /// The numeric code stored in Postgres and served by the API.
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether a build's code means it is broken (FAILURE or EXCEPTION):
    /// red on the console and the release board.
    pub fn is_red_code(code: i16) -> bool {
        matches!(Self::from_code(code), Some(Results::Failure | Results::Exception))
    }

    pub fn name(self) -> &'static str {
        match self {
            Results::Success => "success",
            Results::Warnings => "warnings",
            Results::Failure => "failure",
            Results::Skipped => "skipped",
            Results::Exception => "exception",
            Results::Retry => "retry",
            Results::Cancelled => "cancelled",
        }
    }

    /// How bad a result is when combining: Buildbot's `worst_status` order,
    /// where SKIPPED is better than SUCCESS.
    fn severity(self) -> u8 {
        match self {
            Results::Skipped => 0,
            Results::Success => 1,
            Results::Warnings => 2,
            Results::Failure => 3,
            Results::Exception => 4,
            Results::Retry => 5,
            Results::Cancelled => 6,
        }
    }

    pub fn worst(self, other: Results) -> Results {
        if other.severity() > self.severity() { other } else { self }
    }
}

impl std::fmt::Display for Results {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The flags of a step that decide how its result counts for the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFlags {
    pub halt_on_failure: bool,
    pub flunk_on_failure: bool,
    pub warn_on_failure: bool,
    pub warn_on_warnings: bool,
}

/// What a step's result does to its build's result, as Buildbot's
/// `BuildStep` flags decide it.
pub fn build_result_contribution(step: Results, flags: StepFlags) -> Results {
    match step {
        Results::Failure if flags.flunk_on_failure => Results::Failure,
        Results::Failure if flags.warn_on_failure => Results::Warnings,
        Results::Failure => Results::Success,
        Results::Warnings if flags.warn_on_warnings => Results::Warnings,
        Results::Warnings => Results::Success,
        Results::Skipped => Results::Success,
        other => other,
    }
}

/// Whether a step's result stops the build's later steps (other than the
/// `always_run` ones).
pub fn halts_build(step: Results, flags: StepFlags) -> bool {
    match step {
        Results::Failure => flags.halt_on_failure,
        Results::Exception | Results::Cancelled | Results::Retry => true,
        _ => false,
    }
}

/// A size as people read it: `812 B`, `12.3 KiB`, `200.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A map of exit codes to results (`decode_rc`). Exit codes are integers in
/// YAML but strings once a step travels as JSON (whose keys are strings);
/// both are read.
pub fn deserialize_exit_codes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<i32, Results>, D::Error> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct ExitCode(i32);

    impl<'de> Deserialize<'de> for ExitCode {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct ExitCodeVisitor;

            impl de::Visitor<'_> for ExitCodeVisitor {
                type Value = ExitCode;

                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an exit code (a whole number)")
                }

                fn visit_i64<E: de::Error>(self, value: i64) -> Result<ExitCode, E> {
                    i32::try_from(value)
                        .map(ExitCode)
                        .map_err(|_| E::custom(format!("exit code {value} is out of range")))
                }

                fn visit_u64<E: de::Error>(self, value: u64) -> Result<ExitCode, E> {
                    i32::try_from(value)
                        .map(ExitCode)
                        .map_err(|_| E::custom(format!("exit code {value} is out of range")))
                }

                fn visit_str<E: de::Error>(self, value: &str) -> Result<ExitCode, E> {
                    value.parse().map(ExitCode).map_err(|_| E::custom(format!("`{value}` is not an exit code")))
                }
            }

            deserializer.deserialize_any(ExitCodeVisitor)
        }
    }

    let codes = BTreeMap::<ExitCode, Results>::deserialize(deserializer);
    Ok(codes?.into_iter().map(|(code, results)| (code.0, results)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_FLAGS: StepFlags =
        StepFlags { halt_on_failure: false, flunk_on_failure: true, warn_on_failure: false, warn_on_warnings: true };

    #[test]
    fn the_worst_result_wins_and_skipped_is_best() {
        assert_eq!(Results::Success.worst(Results::Skipped), Results::Success);
        assert_eq!(Results::Warnings.worst(Results::Failure), Results::Failure);
        assert_eq!(Results::Cancelled.worst(Results::Exception), Results::Cancelled);
    }

    #[test]
    fn a_failure_counts_by_the_step_flags() {
        assert_eq!(build_result_contribution(Results::Failure, DEFAULT_FLAGS), Results::Failure);
        let warn_only = StepFlags { flunk_on_failure: false, warn_on_failure: true, ..DEFAULT_FLAGS };
        assert_eq!(build_result_contribution(Results::Failure, warn_only), Results::Warnings);
        let ignored = StepFlags { flunk_on_failure: false, ..DEFAULT_FLAGS };
        assert_eq!(build_result_contribution(Results::Failure, ignored), Results::Success);
    }

    #[test]
    fn codes_round_trip() {
        for result in Results::ALL {
            assert_eq!(Results::from_code(result.code()), Some(result));
        }
        assert_eq!(Results::from_code(7), None);
    }
}
