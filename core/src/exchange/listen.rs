//! `subscriptions/listen` (MCP 2026-07-28) at a virtual server: one client stream of the
//! notifications the client opted into, fed by every upstream of the server.
//!
//! One HTTP exchange through Envoy reaches one upstream, so the filter only decides where
//! a listen goes:
//! - picked at one upstream (`mcpgw-upstream`, as the relay does when it fans streams
//!   in): straight to that upstream, which must speak the 2026 era;
//! - otherwise to the session relay, which acknowledges the client's kinds, listens to
//!   every upstream back through this listener, re-stamps their notifications with the
//!   client's subscription id, and adds `list_changed` when the server's catalog (served
//!   here, from the snapshot) changes;
//! - without a relay, a server whose only upstream speaks the 2026 era is listened to
//!   directly (its own `list_changed` then reaches the client as the upstream sends it);
//!   anything else is answered 404, as every relay feature is without one.

use std::rc::Rc;

use super::{Exchange, Forward, Header, Host, Phase, Step, point_at};
use crate::edge;
use crate::jsonrpc::Message;

impl Exchange {
    /// Routes a 2026-era `subscriptions/listen` to the virtual server.
    pub(super) fn listen(&mut self, msg: &Message, host: &mut impl Host) -> Step {
        let config = Rc::clone(&self.config);
        let server = self.server.clone().unwrap_or_default();
        let upstreams = config.edge.upstreams_of(&server);
        if let Some(pick) = self.pick.take() {
            let Some(&(id, up)) = upstreams.iter().find(|(id, _)| *id == pick) else {
                return self.reject(
                    &edge::unlistenable(&pick, "not an upstream of this server"),
                    host,
                );
            };
            if !up.speaks_modern() {
                return self.reject(
                    &edge::unlistenable(
                        id,
                        "it speaks MCP 2025 only; its notifications come on a session's GET stream",
                    ),
                    host,
                );
            }
            return self.forward_listen(msg, up);
        }
        if config.edge.relay().is_some() {
            let ids: Vec<&str> = upstreams.iter().map(|(id, _)| *id).collect();
            let eras: Vec<&str> = upstreams
                .iter()
                .map(|(_, up)| {
                    if up.speaks_modern() {
                        "modern"
                    } else {
                        "legacy"
                    }
                })
                .collect();
            let headers = vec![
                (
                    Header::Named(edge::RELAY_UPSTREAMS_HEADER),
                    Some(ids.join(",")),
                ),
                (Header::Named(edge::RELAY_ERAS_HEADER), Some(eras.join(","))),
                (
                    Header::Named(edge::STREAM_HEADER),
                    Some("listen".to_owned()),
                ),
            ];
            return self.hand_to_relay("subscriptions/listen", headers, host);
        }
        match upstreams.as_slice() {
            [(_, up)] if up.speaks_modern() => self.forward_listen(msg, up),
            _ => self.reject(
                &edge::no_relay("subscriptions/listen over several upstreams or a 2025-era one"),
                host,
            ),
        }
    }

    /// Sends the listen, unchanged, to upstream `up`: its stream is the client's.
    fn forward_listen(&mut self, msg: &Message, up: &crate::catalog::Upstream) -> Step {
        let mut forward = Forward {
            headers: vec![
                (Header::Named(edge::UPSTREAM_HEADER), None),
                (
                    Header::Named(edge::STREAM_HEADER),
                    Some("listen".to_owned()),
                ),
            ],
            body: None,
        };
        self.body = Vec::new();
        self.phase = Phase::Forwarded;
        self.label(msg);
        self.propagate_trace_context(msg, &mut forward);
        self.strip_credentials(&mut forward);
        self.drop_session_header(&mut forward);
        point_at(up, &mut forward);
        Step::Forward(forward)
    }
}
