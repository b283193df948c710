//! The upstream-identity stage of the exchange ([`crate::upstream_identity`]): as whom a
//! virtual server's call reaches the upstream that owns it.
//!
//! - Before a call to a `token-exchange` upstream is routed ([`Exchange::upstream_token`]),
//!   the principal's exchanged token for that upstream is read from shared data; on a miss
//!   the request is held while the token endpoint is called, and on its answer the call is
//!   served again from where it stopped ([`Exchange::on_exchange_answer`]): authorization
//!   and limits are not run twice, plugins run once (after the exchange).
//! - When the call goes on ([`Exchange::identify_upstream`]), the exchanged token becomes
//!   its `Authorization`, or the signed principal its [`IDENTITY_HEADER`]; the calls that
//!   open the upstream's session for it carry the same ([`Exchange::stamp_calls`]).
//!
//! Nothing here runs for `none` and `static` upstreams, whose clusters do all of it.

use std::rc::Rc;

use super::{Call, CallAnswer, Exchange, Forward, Header, Host, Phase, Step};
use crate::catalog::Upstream;
use crate::jsonrpc::Message;
use crate::reason::{Reason, Rejection};
use crate::upstream_identity::{
    self as identity, CachedToken, ExchangeFailure, IDENTITY_HEADER, UpstreamIdentity,
};

/// A request held while its principal's token is exchanged.
pub(super) struct Waiting {
    /// The call, served again once the token is there.
    msg: Box<Message>,
    /// The upstream the token is for.
    upstream: String,
    /// The exchange call's tag.
    pub(super) tag: u32,
    /// Where the token is cached.
    key: String,
    /// The client token's own expiry: the exchanged one is not used past it.
    client_exp: Option<u64>,
}

/// The identity headers of one upstream, set on the call and on the calls that open its
/// session.
#[derive(Debug, Default)]
pub(super) struct UpstreamCredential {
    /// The upstream they are for.
    upstream: String,
    /// `(header, value)`.
    headers: Vec<(&'static str, String)>,
}

impl Exchange {
    /// Before a call to `upstream_id` is routed: `None` when it may go on (no exchange
    /// needed, or the token is at hand), else the exchange call to make or the refusal.
    pub(super) fn upstream_token(
        &mut self,
        msg: &Message,
        upstream_id: &str,
        host: &mut impl Host,
    ) -> Option<Step> {
        let config = Rc::clone(&self.config);
        let up = config.edge.upstream(upstream_id)?;
        let UpstreamIdentity::TokenExchange(t) = &up.identity else {
            return None;
        };
        if self
            .upstream_credential
            .as_ref()
            .is_some_and(|c| c.upstream == upstream_id)
        {
            return None;
        }
        let now = host.now();
        let Some(principal) = self.principal.clone() else {
            // Only a virtual server with `auth` knows whose token to exchange.
            return Some(self.refuse_exchange(
                msg,
                upstream_id,
                &ExchangeFailure::NoSubjectToken,
                host,
            ));
        };
        let key = identity::cache_key(upstream_id, &principal.digest);
        if let (Some(raw), _) = host.shared_get(&key)
            && let Some(cached) = CachedToken::decode(&raw, now)
        {
            self.set_bearer(upstream_id, &cached.token);
            return None;
        }
        let Some(subject) = self.subject_token.take() else {
            return Some(self.refuse_exchange(
                msg,
                upstream_id,
                &ExchangeFailure::NoSubjectToken,
                host,
            ));
        };
        let (headers, body) = identity::exchange_request(t, &subject);
        self.next_tag = self.next_tag.wrapping_add(1);
        let tag = self.next_tag;
        self.phase = Phase::Exchanging(Box::new(Waiting {
            msg: Box::new(msg.clone()),
            upstream: upstream_id.to_owned(),
            tag,
            key,
            client_exp: principal
                .claims
                .get("exp")
                .and_then(serde_json::Value::as_u64),
        }));
        Some(Step::Call(vec![Call {
            tag,
            cluster: t.cluster.clone(),
            headers,
            body: Some(body),
            timeout_ms: identity::EXCHANGE_TIMEOUT_MS,
        }]))
    }

    /// Whether the answer to call `tag` is the token endpoint's (its body is needed).
    pub fn reads_call_body(&self, tag: u32) -> bool {
        matches!(&self.phase, Phase::Exchanging(w) if w.tag == tag)
    }

    /// The token endpoint answered (or failed): the held call goes on with the token, or
    /// is refused naming the step.
    pub(super) fn on_exchange_answer(
        &mut self,
        waiting: Waiting,
        answer: CallAnswer,
        host: &mut impl Host,
    ) -> Step {
        self.phase = Phase::Forwarded;
        let now = host.now();
        match identity::read_exchange_answer(
            answer.status,
            answer.body.as_deref(),
            now,
            waiting.client_exp,
        ) {
            Ok(token) => {
                // A lost race means another request cached one: either is good.
                let _ = host.shared_set(&waiting.key, &token.encode(), None);
                self.set_bearer(&waiting.upstream, &token.token);
                self.serve_admitted(&waiting.msg, host)
            }
            Err(failure) => {
                host.warn(&format!("mcpgw: {}", failure.message(&waiting.upstream)));
                self.refuse_exchange(&waiting.msg, &waiting.upstream, &failure, host)
            }
        }
    }

    fn set_bearer(&mut self, upstream: &str, token: &str) {
        self.upstream_credential = Some(UpstreamCredential {
            upstream: upstream.to_owned(),
            headers: vec![("authorization", format!("Bearer {token}"))],
        });
    }

    fn refuse_exchange(
        &mut self,
        msg: &Message,
        upstream: &str,
        failure: &ExchangeFailure,
        host: &mut impl Host,
    ) -> Step {
        let reason = if failure.is_client_fault() {
            Reason::UpstreamIdentityRefused
        } else {
            Reason::UpstreamIdentityFailed
        };
        let r = Rejection::new(reason, msg.id.clone(), failure.message(upstream));
        self.reject(&r, host)
    }

    /// Adds the identity of the principal for upstream `id` (`up`) to a call that goes on.
    /// A call that did not go through [`Exchange::upstream_token`] (a GET stream) carries
    /// the principal's cached token if there is one, and no credential otherwise.
    pub(super) fn identify_upstream(
        &mut self,
        id: &str,
        up: &Upstream,
        forward: &mut Forward,
        host: &mut impl Host,
    ) {
        match &up.identity {
            UpstreamIdentity::None | UpstreamIdentity::Static => return,
            UpstreamIdentity::IdentityHeader(h) => {
                let Some(principal) = self.principal.as_deref() else {
                    // No principal, no header: the upstream sees an anonymous call.
                    return;
                };
                let signed = identity::sign_identity(h, principal, host.now());
                self.upstream_credential = Some(UpstreamCredential {
                    upstream: id.to_owned(),
                    headers: vec![(IDENTITY_HEADER, signed)],
                });
            }
            UpstreamIdentity::TokenExchange(_) => {
                let known = self
                    .upstream_credential
                    .as_ref()
                    .is_some_and(|c| c.upstream == id);
                if !known && let Some(principal) = self.principal.clone() {
                    let key = identity::cache_key(id, &principal.digest);
                    if let (Some(raw), _) = host.shared_get(&key)
                        && let Some(cached) = CachedToken::decode(&raw, host.now())
                    {
                        self.set_bearer(id, &cached.token);
                    }
                }
            }
        }
        if let Some(c) = self
            .upstream_credential
            .as_ref()
            .filter(|c| c.upstream == id)
        {
            for (name, value) in &c.headers {
                forward
                    .headers
                    .push((Header::Named(name), Some(value.clone())));
            }
        }
    }

    /// Adds the upstream's identity headers to the calls of `step` that go to it (the
    /// calls opening its session on behalf of the held call).
    pub(super) fn stamp_calls(&self, mut step: Step) -> Step {
        let (Step::Call(calls), Some(c)) = (&mut step, self.upstream_credential.as_ref()) else {
            return step;
        };
        let Some(cluster) = self.config.edge.upstream(&c.upstream).map(|u| &u.cluster) else {
            return step;
        };
        for call in calls.iter_mut().filter(|call| &call.cluster == cluster) {
            call.headers.extend(c.headers.iter().cloned());
        }
        step
    }
}

#[cfg(test)]
mod tests;
