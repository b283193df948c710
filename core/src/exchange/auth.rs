//! The identity stage of the exchange (`crate::auth`), for virtual servers with `auth`:
//!
//! - head: the OAuth protected resource metadata (RFC 9728) is answered
//!   ([`Exchange::serve_metadata`]); a request to a protected server is authenticated from
//!   the payload `jwt_authn` verified ([`Exchange::authenticate`]), before its session is
//!   resumed (a session is its principal's alone) and before anything else of it is served:
//!   a missing or bad token gets 401 with a `WWW-Authenticate` challenge;
//! - body: a request is authorized ([`Exchange::authorize`]) before the edge answers or
//!   routes it (403 without the permission, with `insufficient_scope`, or when the rules
//!   refuse), and lists show only what the principal may use ([`Exchange::visibility`]).

use std::rc::Rc;

use super::head::{self, RequestHead};
use super::{Exchange, Host, Phase, Reply, Step};
use crate::auth::rules::Args;
use crate::auth::{Decision, Failure, ServerPolicy};
use crate::jsonrpc::Message;
use crate::mcp::Method;
use crate::reason::{Reason, Rejection};

#[cfg(test)]
mod tests;

/// How long clients may cache a metadata document (it changes with the configuration).
const METADATA_MAX_AGE: &str = "max-age=300";

impl Exchange {
    /// Answers a request for OAuth protected resource metadata (`None`: not such a path).
    pub(super) fn serve_metadata(
        &mut self,
        fields: &RequestHead<'_>,
        method: &str,
        host: &mut impl Host,
    ) -> Option<Step> {
        let config = Rc::clone(&self.config);
        if config.access.is_empty() {
            return None;
        }
        let path = head::lossy(fields.path?);
        let doc = config.access.metadata(&path)?;
        let cors = ("access-control-allow-origin", "*".to_owned());
        let reply = |status, headers: Vec<(&'static str, String)>, body: Option<Vec<u8>>| {
            Step::Reply(Reply {
                status,
                headers,
                body,
            })
        };
        let step = match (method, doc) {
            ("GET" | "HEAD", Some(doc)) => reply(
                200,
                vec![
                    ("content-type", "application/json".to_owned()),
                    ("cache-control", METADATA_MAX_AGE.to_owned()),
                    cors,
                ],
                (method == "GET").then(|| doc.to_vec()),
            ),
            // Browser-based clients read it cross-origin.
            ("OPTIONS", _) => reply(
                204,
                vec![
                    cors,
                    ("access-control-allow-methods", "GET".to_owned()),
                    (
                        "access-control-allow-headers",
                        "mcp-protocol-version".to_owned(),
                    ),
                ],
                None,
            ),
            ("GET" | "HEAD", None) => {
                host.count_rejected(Reason::UnknownServer);
                reply(
                    404,
                    vec![("content-type", "application/json".to_owned()), cors],
                    Some(
                        br#"{"error":"not_found","error_description":"no protected resource is described here; use the resource_metadata URL of a 401"}"#
                            .to_vec(),
                    ),
                )
            }
            _ => {
                host.count_rejected(Reason::HttpMethodNotAllowed);
                reply(405, vec![("allow", "GET".to_owned())], None)
            }
        };
        self.phase = Phase::Replied;
        Some(step)
    }

    /// Authenticates a request to virtual server `server` (`None`: it goes on, with
    /// `self.principal` set when a token was verified).
    pub(super) fn authenticate(
        &mut self,
        server: &str,
        fields: &RequestHead<'_>,
        host: &mut impl Host,
    ) -> Option<Step> {
        let config = Rc::clone(&self.config);
        let policy = config.access.server(server)?;
        match config.access.authenticate(
            policy,
            fields.authorization_value,
            fields.verified_payload,
            host.now(),
        ) {
            Ok(principal) => {
                self.principal = principal;
                None
            }
            Err(failure) => Some(self.unauthenticated(policy, &failure, host)),
        }
    }

    fn unauthenticated(
        &mut self,
        policy: &ServerPolicy,
        failure: &Failure,
        host: &mut impl Host,
    ) -> Step {
        let message = match failure {
            Failure::Missing => "this server requires a bearer token".to_owned(),
            Failure::Invalid(why) => format!("invalid token: {why}"),
        };
        let r = Rejection::new(Reason::Unauthenticated, None, message);
        self.refuse(&r, policy.challenge(failure), host)
    }

    /// A refusal with a `WWW-Authenticate` challenge.
    fn refuse(&mut self, r: &Rejection, challenge: String, host: &mut impl Host) -> Step {
        self.phase = Phase::Replied;
        host.count_rejected(r.reason);
        Step::Reply(Reply {
            status: r.status(),
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("www-authenticate", challenge),
            ],
            body: Some(r.body()),
        })
    }

    /// Authorizes `msg` (a message to the request's virtual server, or on the passthrough
    /// path); `None`: allowed.
    pub(super) fn authorize(&mut self, msg: &Message, host: &mut impl Host) -> Option<Step> {
        let config = Rc::clone(&self.config);
        let server = self.server.as_deref().unwrap_or(crate::auth::PASSTHROUGH);
        let policy = config.access.server(server)?;
        let parsed;
        let args = match msg.arguments_span {
            Some((start, end)) if policy.reads_args() && msg.method == Some(Method::ToolsCall) => {
                parsed = usize::try_from(start)
                    .ok()
                    .zip(usize::try_from(end).ok())
                    .and_then(|(s, e)| self.body.get(s..e))
                    .and_then(|bytes| policy.parse_args(bytes));
                match &parsed {
                    Some(v) => Args::Json(v),
                    None => return Some(self.internal_error("tool arguments unreadable", host)),
                }
            }
            _ => Args::None,
        };
        let id = msg.id.clone();
        match policy.authorize(self.principal.as_deref(), server, msg, args) {
            Decision::Allow => None,
            Decision::InsufficientScope(p) => {
                let r = Rejection::new(
                    Reason::InsufficientScope,
                    id,
                    format!("this request needs the permission (scope) {}", p.as_str()),
                );
                Some(self.refuse(&r, policy.insufficient_scope(p), host))
            }
            Decision::Deny(rule) => {
                let what = target(msg);
                let message = match rule {
                    Some(rule) => format!("{what} is denied by rule {rule:?}"),
                    None => format!("{what} is not allowed for this principal"),
                };
                let r = Rejection::new(Reason::AccessDenied, id, message);
                Some(self.reject(&r, host))
            }
        }
    }

    /// Which entries lists show this request's principal: `None` on servers without a
    /// token requirement (everything, to everyone).
    pub(super) fn visibility(&self) -> Option<impl Fn(&str, &str) -> bool + '_> {
        let server = self.server.as_deref()?;
        let policy = self.config.access.server(server).filter(|p| p.required())?;
        let principal = self.principal.as_deref();
        Some(move |method: &str, name: &str| policy.visible(principal, server, method, name))
    }
}

/// What a request uses, for its denial.
fn target(msg: &Message) -> String {
    let name = msg
        .name
        .as_deref()
        .or(msg.uri.as_deref())
        .or(msg.ref_name.as_deref())
        .or(msg.ref_uri.as_deref());
    let method = msg.method.as_ref().map_or("", Method::as_str);
    match name {
        Some(n) => format!("{method} of {n:?}"),
        None => method.to_owned(),
    }
}
