//! Policy test cases kept beside the rules (`[[test]]` tables in policy
//! files) and the runner behind `signet policy test`: a policy repository's
//! own CI can prove that a change allows and denies what it should before
//! any proxy loads it.

use std::path::PathBuf;

use signet_identity::SpiffeId;

use super::{CompiledPolicy, Decision, Effect, Policy, Request};

/// One expected decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    /// The caller.
    pub from: SpiffeId,
    /// The destination.
    pub to: SpiffeId,
    /// HTTP method, canonical form.
    pub method: Option<String>,
    /// HTTP path, canonical form.
    pub path: Option<String>,
    /// What the enforced policy must decide.
    pub expect: Effect,
    /// Where the case is written.
    pub file: PathBuf,
    /// Its line.
    pub line: usize,
}

/// A case and what the policy decided.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// The case.
    pub case: &'a TestCase,
    /// The enforced decision (with any audit difference).
    pub decision: Decision,
}

impl Outcome<'_> {
    /// Whether the decision is the expected one.
    pub fn passed(&self) -> bool {
        self.decision.allowed == (self.case.expect == Effect::Allow)
    }
}

/// Evaluates every test case of `policy` against its rules, each case with
/// the rules that apply to its destination, as that proxy would.
pub fn run(policy: &Policy) -> Vec<Outcome<'_>> {
    let compiled = CompiledPolicy::for_destination(policy, None);
    policy
        .tests
        .iter()
        .map(|case| Outcome {
            case,
            decision: compiled.evaluate(&Request {
                from: &case.from,
                to: &case.to,
                method: case.method.as_deref(),
                path: case.path.as_deref(),
            }),
        })
        .collect()
}
