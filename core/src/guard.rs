//! Guardrail plugins: a pipeline of plugins that inspect, mask or block what a call carries,
//! compiled once from the snapshot's `plugins` (see [`crate::snapshot::plugins`]) into a
//! [`Guard`].
//!
//! The exchange runs it at two points of a call:
//! - pre hooks ([`Guard::pre`]) on the validated request before it is routed: the arguments
//!   of `tools/call` and `prompts/get`, the URI of `resources/read`. A block answers the
//!   request; a mask rewrites the arguments the upstream receives ([`Pre::Edit`]).
//! - post hooks on the response: [`Guard::post_plan`] decides, with the request, which
//!   plugins will see its result; [`Guard::post_body`] (a JSON response) and
//!   [`Guard::post_event`] (the data of one SSE event) then return it unchanged, masked, or
//!   replaced by an error.
//!
//! Plugins run in ascending priority; each sees what the previous ones left, and the first
//! block ends the run. A permissive plugin's findings are only reported ([`Finding`]). No
//! answer ever carries the text a plugin matched: errors name the plugin and what kind of
//! thing it found (`email`, `word`, `regex`, `size`, …).

pub mod detect;
pub mod external;
pub(crate) mod json;
mod literal;
pub(crate) mod plugin;
pub mod schema;

use crate::catalog::Servers;
use crate::fasthash::NameMap;
use crate::jsonrpc::stream::{Body, MessageParser, Options};
use crate::jsonrpc::{Id, Kind as MessageKind, Message, code, error_response_with};
use crate::mcp::Method;
use crate::reason::{Reason, Rejection};
use crate::snapshot::plugins as spec;
use crate::snapshot::{ConfigError, Snapshot};
use plugin::{Conditions, Hooks, Kind, Names, Outcome, Plugin, Reader, Walked, read_strings};
use schema::Schema;
use serde_json::Value;
use std::borrow::Cow;

pub use spec::{Hook, Mode};

/// Who makes a call, as identity will tell (none yet: conditions on teams and principals
/// then never match).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// The subject.
    pub subject: String,
    /// The teams the subject is in.
    pub teams: Vec<String>,
}

/// Where a call is made, for plugin conditions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Call<'a> {
    /// The virtual server addressed, if any.
    pub server: Option<&'a str>,
    /// The caller, when known.
    pub principal: Option<&'a Principal>,
}

/// What a plugin's finding did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The call or its result was blocked.
    Blocked,
    /// Text was masked (or replaced, or truncated).
    Masked,
    /// A permissive plugin would have blocked.
    WouldBlock,
    /// A permissive plugin would have masked.
    WouldMask,
}

impl Effect {
    /// Its label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Blocked => "blocked",
            Effect::Masked => "masked",
            Effect::WouldBlock => "would_block",
            Effect::WouldMask => "would_mask",
        }
    }
}

/// One plugin's finding on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// The plugin's index ([`Guard::plugin_name`]).
    pub plugin: usize,
    /// Where.
    pub hook: Hook,
    /// What it did.
    pub effect: Effect,
    /// What it found (`email`, `word`, `regex`, `size`, `schema`, …), never the text.
    pub what: &'static str,
}

/// The pre hooks' verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pre {
    /// Forward it as it is.
    Pass,
    /// Forward it with `body[start..end]` (the arguments) replaced by `with`.
    Edit {
        /// Offset of the first replaced byte.
        start: u64,
        /// Offset past the last replaced byte.
        end: u64,
        /// The new arguments (JSON).
        with: Vec<u8>,
    },
    /// Answer it with this error.
    Block(Rejection),
}

/// The post hooks' verdict on a response message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Post {
    /// Send it as it is.
    Pass,
    /// Send this instead (the result masked).
    Masked(Vec<u8>),
    /// Send this JSON-RPC error instead.
    Blocked(Vec<u8>),
}

/// Which plugins a request's response goes through (decided with the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostPlan {
    hook: Hook,
    plugins: Vec<usize>,
    server: Option<String>,
    name: Option<String>,
    id: Option<Id>,
    enforcing: bool,
}

impl PostPlan {
    /// Whether a plugin of the plan enforces (what cannot be inspected is then refused).
    pub fn enforcing(&self) -> bool {
        self.enforcing
    }
}

/// A tool's schemas, compiled.
#[derive(Debug, Default)]
struct ToolSchemas {
    input: Option<Schema>,
    output: Option<Schema>,
}

/// The compiled plugin pipeline.
#[derive(Debug, Default)]
pub struct Guard {
    /// Enabled plugins in the order they run.
    plugins: Vec<Plugin>,
    /// Every hook some plugin runs at.
    hooks: Hooks,
    /// Tool schemas per virtual server, when a `schema` plugin exists.
    schemas: NameMap<NameMap<ToolSchemas>>,
    /// Some enabled plugin is `external`.
    has_external: bool,
}

/// Longest plugin name.
pub const MAX_NAME_LEN: usize = 64;

fn invalid(field: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::FieldInvalid {
        field,
        reason: reason.into(),
    }
}

fn kinds_set(p: &spec::Plugin) -> Vec<&'static str> {
    [
        ("pii", p.pii.is_some()),
        ("secrets", p.secrets.is_some()),
        ("deny_list", p.deny_list.is_some()),
        ("regex", p.regex.is_some()),
        ("resource_filter", p.resource_filter.is_some()),
        ("output_size", p.output_size.is_some()),
        ("schema", p.schema.is_some()),
        ("external", p.external.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect()
}

/// Checks and compiles one plugin (`i`: its index in `plugins`).
fn compile_plugin(i: usize, p: &spec::Plugin) -> Result<Plugin, ConfigError> {
    let field = format!("plugins[{i}]");
    let name_ok = !p.name.is_empty()
        && p.name.len() <= MAX_NAME_LEN
        && p.name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(invalid(
            format!("{field}.name"),
            format!("must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"),
        ));
    }
    match kinds_set(p).as_slice() {
        [_] => {}
        [] => {
            return Err(invalid(
                field,
                "needs one of pii, secrets, deny_list, regex, resource_filter, output_size, schema, external",
            ));
        }
        many => {
            return Err(invalid(
                field,
                format!("sets {} (a plugin is one kind)", many.join(" and ")),
            ));
        }
    }
    let (defaults, allowed) = plugin::hooks_of(p);
    for (j, h) in p.hooks.iter().enumerate() {
        if !allowed.contains(h) {
            return Err(invalid(
                format!("{field}.hooks[{j}]"),
                format!(
                    "{} does not run at {}",
                    kinds_set(p).first().copied().unwrap_or_default(),
                    h.as_str()
                ),
            ));
        }
        if p.hooks.get(..j).is_some_and(|before| before.contains(h)) {
            return Err(invalid(
                format!("{field}.hooks[{j}]"),
                format!("{} is listed twice", h.as_str()),
            ));
        }
    }
    let c = &p.conditions;
    for (list, names) in [
        ("servers", &c.servers),
        ("tools", &c.tools),
        ("prompts", &c.prompts),
        ("resources", &c.resources),
        ("teams", &c.teams),
        ("principals", &c.principals),
    ] {
        if let Some(j) = names.iter().position(|n| n.is_empty() || n == "*") {
            return Err(invalid(
                format!("{field}.conditions.{list}[{j}]"),
                "must name something (leave the list empty to match everything)",
            ));
        }
    }
    let kind = plugin::compile_kind(p, &field).map_err(|(f, why)| invalid(f, why))?;
    let hooks = if p.hooks.is_empty() {
        defaults
    } else {
        &p.hooks
    };
    Ok(Plugin {
        name: p.name.clone(),
        mode: p.mode,
        hooks: Hooks::of(hooks),
        conditions: Conditions {
            servers: Names::new(&c.servers),
            tools: Names::new(&c.tools),
            prompts: Names::new(&c.prompts),
            resources: Names::new(&c.resources),
            teams: Names::new(&c.teams),
            principals: Names::new(&c.principals),
        },
        kind,
    })
}

/// The schemas of every tool of every virtual server that declares one (a schema that does
/// not compile is not used: see [`schema`]).
fn tool_schemas(servers: &Servers) -> NameMap<NameMap<ToolSchemas>> {
    servers
        .iter()
        .map(|(id, server)| {
            let tools = server
                .tools
                .iter()
                .filter(|t| t.item.get().contains("Schema"))
                .filter_map(|t| {
                    let item: Value = serde_json::from_str(t.item.get()).ok()?;
                    let compile = |key| item.get(key).and_then(|s| Schema::compile(s).ok());
                    let schemas = ToolSchemas {
                        input: compile("inputSchema"),
                        output: compile("outputSchema"),
                    };
                    (schemas.input.is_some() || schemas.output.is_some())
                        .then(|| (t.name.clone(), schemas))
                })
                .collect();
            (id.clone(), tools)
        })
        .collect()
}

impl Guard {
    /// Checks `plugins` as [`Snapshot::validate`] does (names, kinds, hooks, conditions,
    /// settings, regular expressions), without compiling tool schemas.
    pub fn check(plugins: &[spec::Plugin]) -> Result<(), ConfigError> {
        Guard::compile(plugins, None).map(|_| ())
    }

    fn compile(plugins: &[spec::Plugin], servers: Option<&Servers>) -> Result<Guard, ConfigError> {
        let mut compiled = Vec::with_capacity(plugins.len());
        for (i, p) in plugins.iter().enumerate() {
            if let Some(j) = plugins
                .get(..i)
                .and_then(|b| b.iter().position(|q| q.name == p.name))
            {
                return Err(invalid(
                    format!("plugins[{i}].name"),
                    format!("{:?} is also the name of plugins[{j}]", p.name),
                ));
            }
            let c = compile_plugin(i, p)?;
            if p.mode != Mode::Disabled {
                compiled.push((p.priority, i, c));
            }
        }
        compiled.sort_by_key(|(priority, i, _)| (*priority, *i));
        let plugins: Vec<Plugin> = compiled.into_iter().map(|(_, _, p)| p).collect();
        let hooks = plugins
            .iter()
            .fold(Hooks::default(), |h, p| h.union(p.hooks));
        let schemas = match servers {
            Some(servers) if plugins.iter().any(|p| matches!(p.kind, Kind::Schema)) => {
                tool_schemas(servers)
            }
            _ => NameMap::default(),
        };
        let has_external = plugins.iter().any(|p| p.kind.is_external());
        Ok(Guard {
            plugins,
            hooks,
            schemas,
            has_external,
        })
    }

    /// Whether no plugin runs.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Whether some plugin runs on requests (so their bodies must be read whole).
    pub fn has_pre_hooks(&self) -> bool {
        [
            Hook::ToolPreInvoke,
            Hook::PromptPreFetch,
            Hook::ResourcePreFetch,
        ]
        .iter()
        .any(|h| self.hooks.contains(*h))
    }

    /// The name of plugin `i` of a [`Finding`].
    pub fn plugin_name(&self, i: usize) -> &str {
        self.plugins.get(i).map_or("", |p| p.name.as_str())
    }

    /// The mode of plugin `i`.
    fn enforces(&self, i: usize) -> bool {
        self.plugins.get(i).is_some_and(|p| p.mode == Mode::Enforce)
    }

    /// The plugins that run at `hook` for a call at `call` naming `name` (the tool, prompt
    /// or resource URI).
    fn applicable(&self, hook: Hook, call: &Call<'_>, name: Option<&str>) -> Vec<usize> {
        self.plugins
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                let c = &p.conditions;
                let target = match hook {
                    Hook::ToolPreInvoke | Hook::ToolPostInvoke => &c.tools,
                    Hook::PromptPreFetch | Hook::PromptPostFetch => &c.prompts,
                    Hook::ResourcePreFetch | Hook::ResourcePostFetch => &c.resources,
                };
                let teams = c.teams.is_empty()
                    || call
                        .principal
                        .is_some_and(|who| c.teams.admit_any(who.teams.iter().map(String::as_str)));
                let principals = c.principals.is_empty()
                    || call
                        .principal
                        .is_some_and(|who| c.principals.admit(Some(&who.subject)));
                p.hooks.contains(hook)
                    && c.servers.admit(call.server)
                    && target.admit(name)
                    && teams
                    && principals
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The plugins of the local pipeline (all but `external` ones) that run at `hook`.
    fn applicable_local(&self, hook: Hook, call: &Call<'_>, name: Option<&str>) -> Vec<usize> {
        let mut plugins = self.applicable(hook, call, name);
        plugins.retain(|&i| !self.plugins.get(i).is_some_and(|p| p.kind.is_external()));
        plugins
    }

    /// The `external` plugins that run on request `msg` (`pre`) or on its response (not
    /// `pre`), in the order they run, with the hook.
    pub fn externals(&self, call: &Call<'_>, msg: &Message, pre: bool) -> (Hook, Vec<usize>) {
        let none = (Hook::ToolPreInvoke, Vec::new());
        if !self.has_external || msg.kind != MessageKind::Request {
            return none;
        }
        let Some((before, after)) = Guard::hooks_of(msg.method.as_ref()) else {
            return none;
        };
        let hook = if pre { before } else { after };
        if !self.hooks.contains(hook) {
            return none;
        }
        let mut plugins = self.applicable(hook, call, Guard::target(hook, msg));
        plugins.retain(|&i| self.plugins.get(i).is_some_and(|p| p.kind.is_external()));
        (hook, plugins)
    }

    /// The service of `external` plugin `i`.
    pub fn service(&self, i: usize) -> Option<&external::Service> {
        match &self.plugins.get(i)?.kind {
            Kind::External(service) => Some(service),
            _ => None,
        }
    }

    /// Whether plugin `i` enforces (its findings take effect).
    pub fn enforcing(&self, i: usize) -> bool {
        self.enforces(i)
    }

    /// The hooks of a request's method (pre, post), if it has any.
    fn hooks_of(method: Option<&Method>) -> Option<(Hook, Hook)> {
        match method? {
            Method::ToolsCall => Some((Hook::ToolPreInvoke, Hook::ToolPostInvoke)),
            Method::PromptsGet => Some((Hook::PromptPreFetch, Hook::PromptPostFetch)),
            Method::ResourcesRead => Some((Hook::ResourcePreFetch, Hook::ResourcePostFetch)),
            _ => None,
        }
    }

    /// What a message names for conditions at `hook`.
    fn target(hook: Hook, msg: &Message) -> Option<&str> {
        match hook {
            Hook::ResourcePreFetch | Hook::ResourcePostFetch => msg.uri.as_deref(),
            _ => msg.name.as_deref(),
        }
    }

    fn tool_schemas(&self, server: Option<&str>, tool: Option<&str>) -> Option<&ToolSchemas> {
        self.schemas.get(server?)?.get(tool?)
    }

    /// Runs the pre hooks on request `msg`, whose body is `body` (the arguments are read at
    /// `msg.arguments_span`). Findings are appended to `findings`.
    pub fn pre(
        &self,
        call: &Call<'_>,
        msg: &Message,
        body: &[u8],
        findings: &mut Vec<Finding>,
    ) -> Pre {
        if msg.kind != MessageKind::Request {
            return Pre::Pass;
        }
        let Some((hook, _)) = Guard::hooks_of(msg.method.as_ref()) else {
            return Pre::Pass;
        };
        if !self.hooks.contains(hook) {
            return Pre::Pass;
        }
        let name = Guard::target(hook, msg);
        let plugins = self.applicable_local(hook, call, name);
        if plugins.is_empty() {
            return Pre::Pass;
        }
        let span = msg.arguments_span.and_then(|(start, end)| {
            let bytes = body.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
            Some((start, end, bytes))
        });
        let mut args: Cow<'_, [u8]> = Cow::Borrowed(span.map_or(&b"{}"[..], |(_, _, b)| b));
        let mut changed = false;
        let mut k = 0;
        while let Some(&i) = plugins.get(k) {
            let Some(p) = self.plugins.get(i) else {
                k += 1;
                continue;
            };
            let enforce = p.mode == Mode::Enforce;
            if hook != Hook::ResourcePreFetch && p.is_text() {
                // This plugin and the text plugins right after it read the arguments in
                // one walk.
                let mut readers = Vec::new();
                while let Some((j, q)) = plugins
                    .get(k)
                    .and_then(|&j| Some((j, self.plugins.get(j)?)))
                    .filter(|(_, q)| q.is_text())
                {
                    let mut r = Reader::new(j, q, q.mode == Mode::Enforce);
                    if hook == Hook::ToolPreInvoke
                        && let Outcome::Block(what) = q.on_tool(name.unwrap_or_default())
                    {
                        r.denied = Some(what);
                    }
                    readers.push(r);
                    k += 1;
                }
                // Arguments the parser accepted are JSON the walker follows; if not, each
                // plugin refuses what it cannot read.
                let Walked { stop, new, .. } = read_strings(&mut readers, &args, None)
                    .unwrap_or_else(|_| {
                        readers.iter_mut().for_each(Reader::unreadable);
                        Walked {
                            end: None,
                            stop: first_enforced_block(&readers),
                            new: None,
                        }
                    });
                for r in readers.iter().take(stop.saturating_add(1)) {
                    if let Some(what) = self.record(findings, r.index, hook, &r.outcome()) {
                        let message =
                            format!("request blocked by plugin {:?} ({what})", r.plugin.name);
                        return Pre::Block(self.rejection(
                            Reason::PluginBlocked,
                            r.index,
                            hook,
                            what,
                            msg.id.clone(),
                            message,
                        ));
                    }
                }
                if let Some(new) = new {
                    args = Cow::Owned(new);
                    changed = true;
                }
                continue;
            }
            k += 1;
            let outcome = match (&p.kind, hook) {
                (_, Hook::ResourcePreFetch) => p.on_uri(msg.uri.as_deref().unwrap_or_default()),
                (Kind::Schema, _) => match self.check_arguments(call, name, &args) {
                    Some(detail) => {
                        findings.push(Finding {
                            plugin: i,
                            hook,
                            effect: if enforce {
                                Effect::Blocked
                            } else {
                                Effect::WouldBlock
                            },
                            what: "schema",
                        });
                        if enforce {
                            let message = format!(
                                "arguments do not match the tool's inputSchema: {detail} (plugin {:?})",
                                p.name
                            );
                            return Pre::Block(self.rejection(
                                Reason::PluginInvalidArguments,
                                i,
                                hook,
                                "schema",
                                msg.id.clone(),
                                message,
                            ));
                        }
                        continue;
                    }
                    None => Outcome::Pass,
                },
                // Nothing else runs before a call (see `plugin::hooks_of`).
                _ => Outcome::Pass,
            };
            if let Some(what) = self.record(findings, i, hook, &outcome) {
                let message = format!("request blocked by plugin {:?} ({what})", p.name);
                return Pre::Block(self.rejection(
                    Reason::PluginBlocked,
                    i,
                    hook,
                    what,
                    msg.id.clone(),
                    message,
                ));
            }
        }
        match (changed, span) {
            (true, Some((start, end, _))) => Pre::Edit {
                start,
                end,
                with: args.into_owned(),
            },
            _ => Pre::Pass,
        }
    }

    /// Records what plugin `i` made of a text at `hook` as a finding (none when it
    /// passed); returns what it found when that blocks (it enforces).
    fn record(
        &self,
        findings: &mut Vec<Finding>,
        i: usize,
        hook: Hook,
        outcome: &Outcome,
    ) -> Option<&'static str> {
        let enforce = self.enforces(i);
        let (effect, what) = match *outcome {
            Outcome::Pass => return None,
            Outcome::Block(what) if enforce => (Effect::Blocked, what),
            Outcome::Block(what) => (Effect::WouldBlock, what),
            Outcome::Changed(_, what) if enforce => (Effect::Masked, what),
            Outcome::Changed(_, what) => (Effect::WouldMask, what),
        };
        findings.push(Finding {
            plugin: i,
            hook,
            effect,
            what,
        });
        (effect == Effect::Blocked).then_some(what)
    }

    /// Why the arguments `args` fail the called tool's `inputSchema` (`None`: they pass, or
    /// the tool has none).
    fn check_arguments(&self, call: &Call<'_>, tool: Option<&str>, args: &[u8]) -> Option<String> {
        let schema = self.tool_schemas(call.server, tool)?.input.as_ref()?;
        let value: Value = match serde_json::from_slice(args) {
            Ok(v) => v,
            Err(_) => return Some("/: is not JSON".into()),
        };
        schema
            .check(&value)
            .map(|(at, problem)| format!("{at}: {problem}"))
    }

    fn rejection(
        &self,
        reason: Reason,
        plugin: usize,
        hook: Hook,
        what: &str,
        id: Option<Id>,
        message: String,
    ) -> Rejection {
        let mut r = Rejection::new(reason, id, message);
        r.data = Some(error_data(self.plugin_name(plugin), hook, what));
        r
    }

    /// Whether a plugin would see request `msg` or its response.
    pub fn inspects(&self, call: &Call<'_>, msg: &Message) -> bool {
        msg.kind == MessageKind::Request
            && Guard::hooks_of(msg.method.as_ref()).is_some_and(|(pre, post)| {
                [pre, post].into_iter().any(|hook| {
                    self.hooks.contains(hook)
                        && !self
                            .applicable(hook, call, Guard::target(hook, msg))
                            .is_empty()
                })
            })
    }

    /// Which plugins will see the response to request `msg`; `None` when none will.
    pub fn post_plan(&self, call: &Call<'_>, msg: &Message) -> Option<PostPlan> {
        if msg.kind != MessageKind::Request {
            return None;
        }
        let (_, hook) = Guard::hooks_of(msg.method.as_ref())?;
        if !self.hooks.contains(hook) {
            return None;
        }
        let name = Guard::target(hook, msg);
        let plugins = self.applicable_local(hook, call, name);
        if plugins.is_empty() {
            return None;
        }
        Some(PostPlan {
            hook,
            enforcing: plugins.iter().any(|i| self.enforces(*i)),
            plugins,
            server: call.server.map(str::to_owned),
            name: name.map(str::to_owned),
            id: msg.id.clone(),
        })
    }

    /// Runs the post hooks of `plan` on a complete JSON response body.
    pub fn post_body(&self, plan: &PostPlan, body: &[u8], findings: &mut Vec<Finding>) -> Post {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        if body.iter().all(u8::is_ascii_whitespace) {
            return Post::Pass;
        }
        self.post_message(plan, body, findings, &mut None)
    }

    /// Runs the post hooks of `plan` on the data of one SSE event (its `data` lines
    /// joined).
    pub fn post_event(&self, plan: &PostPlan, data: &[u8], findings: &mut Vec<Finding>) -> Post {
        self.post_event_parsed(plan, data, findings).0
    }

    /// [`Guard::post_event`], with the message the hooks parsed when it passed or was
    /// masked, so the caller need not parse it again. Masking changes only the result:
    /// the message's spans hold in the masked text up to the result's end.
    pub fn post_event_parsed(
        &self,
        plan: &PostPlan,
        data: &[u8],
        findings: &mut Vec<Finding>,
    ) -> (Post, Option<Message>) {
        let mut parsed = None;
        // An event without data (a stream's priming event, a keep-alive) carries nothing.
        if data.iter().all(u8::is_ascii_whitespace) {
            return (Post::Pass, parsed);
        }
        let post = self.post_message(plan, data, findings, &mut parsed);
        (post, parsed)
    }

    /// The error that replaces a response too large to inspect (more than `limit` bytes
    /// held), when a plugin of `plan` enforces; `None` when none does (it then passes).
    pub fn too_large(&self, plan: &PostPlan, limit: usize) -> Option<Vec<u8>> {
        let &first = plan.plugins.iter().find(|i| self.enforces(**i))?;
        let message = format!(
            "result blocked by plugin {:?}: larger than {limit} bytes, it could not be inspected",
            self.plugin_name(first)
        );
        Some(error_response_with(
            plan.id.as_ref(),
            code::FORBIDDEN,
            &message,
            Some(&error_data(self.plugin_name(first), plan.hook, "too_large")),
        ))
    }

    /// The answer to a response that cannot be inspected: refused when a plugin enforces.
    fn uninspectable(&self, plan: &PostPlan, id: Option<&Id>) -> Post {
        let Some(&first) = plan.plugins.iter().find(|i| self.enforces(**i)) else {
            return Post::Pass;
        };
        let message = format!(
            "result blocked by plugin {:?}: it could not be inspected",
            self.plugin_name(first)
        );
        Post::Blocked(error_response_with(
            id.or(plan.id.as_ref()),
            code::FORBIDDEN,
            &message,
            Some(&error_data(
                self.plugin_name(first),
                plan.hook,
                "uninspectable",
            )),
        ))
    }

    /// Runs the post hooks on one message; `parsed` gets the message when it passes or is
    /// masked.
    fn post_message(
        &self,
        plan: &PostPlan,
        data: &[u8],
        findings: &mut Vec<Finding>,
        parsed: &mut Option<Message>,
    ) -> Post {
        // The envelope is read by the parser (which refuses a repeated envelope key: a
        // second `result` that a client's parser would keep); what it only skims (the
        // result, members it does not know) is checked by one strict walk over the whole
        // message below, as a strict parser would check it (a repeated member name
        // anywhere included: a client's parser keeps one of two, a plugin might read the
        // other). When the plan starts with text plugins, that walk is theirs.
        let mut parser = MessageParser::new(Options {
            skim: true,
            ..Options::default()
        });
        let msg = match parser.feed(data).and_then(|_| parser.finish()) {
            Ok(Body::Single(m)) => m,
            _ => return self.uninspectable(plan, None),
        };
        let id = msg.id.as_ref();
        let open = msg
            .result_open
            .and_then(|o| usize::try_from(o).ok())
            .filter(|_| msg.kind == MessageKind::Result);
        let starts_with_text = plan
            .plugins
            .first()
            .and_then(|&i| self.plugins.get(i))
            .is_some_and(Plugin::is_text);
        // How many bytes follow the result: no plugin changes them.
        let mut after = None;
        if open.is_none() || !starts_with_text {
            match json::map_message_strings(data, open.unwrap_or(usize::MAX), &mut |_, _| None) {
                Ok((end, _)) => after = end.map(|e| data.len().saturating_sub(e)),
                Err(_) => return self.uninspectable(plan, id),
            }
        }
        if msg.kind != MessageKind::Result {
            *parsed = Some(msg);
            return Post::Pass;
        }
        let Some(open) = open else {
            return self.uninspectable(plan, id);
        };
        // The message as the plugins leave it; its result is `body[open..len - after]`.
        let mut body: Cow<'_, [u8]> = Cow::Borrowed(data);
        let hook = plan.hook;
        let blocked = |name: &str, what: &str| {
            let message = format!("result blocked by plugin {name:?} ({what})");
            Post::Blocked(error_response_with(
                id,
                code::FORBIDDEN,
                &message,
                Some(&error_data(name, hook, what)),
            ))
        };
        let mut k = 0;
        while let Some(&i) = plan.plugins.get(k) {
            let Some(p) = self.plugins.get(i) else {
                k += 1;
                continue;
            };
            if p.is_text() {
                // This plugin and the text plugins right after it read the result in one
                // walk.
                let mut readers = Vec::new();
                while let Some((j, q)) = plan
                    .plugins
                    .get(k)
                    .and_then(|&j| Some((j, self.plugins.get(j)?)))
                    .filter(|(_, q)| q.is_text())
                {
                    readers.push(Reader::new(j, q, q.mode == Mode::Enforce));
                    k += 1;
                }
                let walked = match after {
                    // The first walk: the whole message, checked.
                    None => read_strings(&mut readers, &body, Some(open)).map(|w| {
                        after = w.end.map(|e| data.len().saturating_sub(e));
                        (w.stop, w.new)
                    }),
                    Some(n) => {
                        let result = result_of(&body, open, n);
                        read_strings(&mut readers, result, None)
                            .map(|w| (w.stop, w.new.map(|new| splice(&body, open, n, &new))))
                    }
                };
                let (Ok((stop, new)), Some(_)) = (walked, after) else {
                    return self.uninspectable(plan, id);
                };
                for r in readers.iter().take(stop.saturating_add(1)) {
                    if let Some(what) = self.record(findings, r.index, hook, &r.outcome()) {
                        return blocked(&r.plugin.name, what);
                    }
                }
                if let Some(new) = new {
                    body = Cow::Owned(new);
                }
                continue;
            }
            k += 1;
            let Some(n) = after else {
                return self.uninspectable(plan, id);
            };
            let result = result_of(&body, open, n);
            let enforce = p.mode == Mode::Enforce;
            let outcome = match &p.kind {
                Kind::Schema => match self.check_output(plan, result) {
                    Some(detail) => {
                        findings.push(Finding {
                            plugin: i,
                            hook,
                            effect: if enforce {
                                Effect::Blocked
                            } else {
                                Effect::WouldBlock
                            },
                            what: "schema",
                        });
                        if enforce {
                            let message = format!(
                                "the tool's result does not match its outputSchema: {detail} (plugin {:?})",
                                p.name
                            );
                            return Post::Blocked(error_response_with(
                                id,
                                code::INTERNAL_ERROR,
                                &message,
                                Some(&error_data(&p.name, hook, "schema")),
                            ));
                        }
                        Ok(Outcome::Pass)
                    }
                    None => Ok(Outcome::Pass),
                },
                _ => p.on_result_size(hook, result),
            };
            let Ok(outcome) = outcome else {
                return self.uninspectable(plan, id);
            };
            if let Some(what) = self.record(findings, i, hook, &outcome) {
                return blocked(&p.name, what);
            }
            if let (true, Outcome::Changed(new, _)) = (enforce, outcome) {
                body = Cow::Owned(splice(&body, open, n, &new));
            }
        }
        let post = match body {
            Cow::Borrowed(_) => Post::Pass,
            Cow::Owned(new) => Post::Masked(new),
        };
        *parsed = Some(msg);
        post
    }

    /// Why a tool result fails the tool's `outputSchema` (`None`: it passes, it is an
    /// error result, or the tool declares none).
    fn check_output(&self, plan: &PostPlan, result: &[u8]) -> Option<String> {
        if plan.hook != Hook::ToolPostInvoke {
            return None;
        }
        let schema = self
            .tool_schemas(plan.server.as_deref(), plan.name.as_deref())?
            .output
            .as_ref()?;
        let value: Value = serde_json::from_slice(result).ok()?;
        if value.get("isError").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        let Some(structured) = value.get("structuredContent") else {
            return Some("structuredContent is missing".into());
        };
        schema
            .check(structured)
            .map(|(at, problem)| format!("structuredContent{at}: {problem}"))
    }
}

/// The result of `body`: from `open` to the `after` bytes that follow it.
fn result_of(body: &[u8], open: usize, after: usize) -> &[u8] {
    body.get(open..body.len().saturating_sub(after))
        .unwrap_or_default()
}

/// `body` with its result (from `open` to the `after` bytes that follow it) replaced by
/// `new`.
fn splice(body: &[u8], open: usize, after: usize, new: &[u8]) -> Vec<u8> {
    let tail = body.len().saturating_sub(after);
    let mut out = Vec::with_capacity(open + new.len() + after);
    out.extend_from_slice(body.get(..open).unwrap_or_default());
    out.extend_from_slice(new);
    out.extend_from_slice(body.get(tail..).unwrap_or_default());
    out
}

/// Where the first enforcing reader that blocks is (`readers.len()` if none does).
fn first_enforced_block(readers: &[Reader<'_>]) -> usize {
    readers
        .iter()
        .position(|r| r.enforce && matches!(r.outcome(), Outcome::Block(_)))
        .unwrap_or(readers.len())
}

/// The `data` of a plugin's error: `{"plugin": …, "hook": …, "reason": …}`.
pub(crate) fn error_data(plugin: &str, hook: Hook, what: &str) -> String {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"plugin\":");
    crate::jsonrpc::write_json_string(&mut out, plugin);
    out.extend_from_slice(b",\"hook\":\"");
    out.extend_from_slice(hook.as_str().as_bytes());
    out.extend_from_slice(b"\",\"reason\":");
    crate::jsonrpc::write_json_string(&mut out, what);
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
}

impl TryFrom<&Snapshot> for Guard {
    type Error = ConfigError;

    /// Checks and compiles the snapshot's plugins, with the schemas of its virtual servers'
    /// tools when a `schema` plugin needs them.
    fn try_from(snapshot: &Snapshot) -> Result<Guard, ConfigError> {
        Guard::compile(&snapshot.plugins, Some(&snapshot.servers))
    }
}

#[cfg(test)]
mod tests;
