//! Guardrail plugins: the detectors, the plugin pipeline and the stages of the exchange
//! that run it on requests (pre hooks) and on responses (post hooks).

pub mod detect;
