//! What the planner's tests share: states and bundles written as text, plans rendered as lines.

use super::{PlanError, plan};
use crate::version::{EtcdState, Version};

pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

pub const BUNDLE: &str = "3.3.25 3.4.23 3.5.1 3.5.16";

pub const LINEAGE: &str =
    "2.2.1 2.3.7 3.0.17 3.1.20 3.2.32 3.3.25 3.4.23 3.5.1 3.5.16 3.5.30 3.5.33 3.6.14 3.7.1";

pub fn state(s: &str) -> EtcdState {
    s.parse().unwrap()
}

pub fn versions(list: &str) -> Vec<Version> {
    list.split_whitespace().map(|v| v.parse().unwrap()).collect()
}

/// Renders a plan as `kind before->after` lines, the compact form the tests compare.
pub fn render(current: &str, target: &str, bundled: &str, media: &str) -> Result<Vec<String>, PlanError> {
    let plan = plan(state(current), state(target), &versions(bundled), media)?;
    Ok(plan.steps.iter().map(ToString::to_string).collect())
}
