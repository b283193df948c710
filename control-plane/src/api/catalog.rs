//! `/tools`, `/resources`, `/prompts`: one generic [`Face`] over the catalog kinds, three
//! typed faces emitted by [`registry_face!`].

use std::marker::PhantomData;

use super::face::{Face, registry_face};
use super::types::{
    ListQuery, Prompt, PromptCreate, PromptPage, PromptUpdate, Resource, ResourceCreate,
    ResourcePage, ResourceUpdate, Tool, ToolCreate, ToolPage, ToolUpdate,
};
use super::{ApiError, AppState, Problem};
use crate::model::{
    CatalogItem, CatalogSpec, FieldInvalid, ItemPatch, ListFilter, NewItem, PromptSpec,
    ResourceSpec, ToolSpec,
};

/// A catalog kind's REST face: its view and bodies, parsed by the conversions in
/// `api::types`.
pub trait CatalogFace: CatalogSpec {
    /// How an item is shown.
    type View: serde::Serialize + super::face::HasId + From<CatalogItem<Self>> + Send + 'static;
    /// Body of a create.
    type Create: serde::de::DeserializeOwned
        + TryInto<NewItem<Self>, Error = FieldInvalid>
        + Send
        + 'static;
    /// Body of an update.
    type Update: serde::de::DeserializeOwned
        + TryInto<ItemPatch<Self>, Error = FieldInvalid>
        + Send
        + 'static;
}

impl CatalogFace for ToolSpec {
    type View = Tool;
    type Create = ToolCreate;
    type Update = ToolUpdate;
}

impl CatalogFace for ResourceSpec {
    type View = Resource;
    type Create = ResourceCreate;
    type Update = ResourceUpdate;
}

impl CatalogFace for PromptSpec {
    type View = Prompt;
    type Create = PromptCreate;
    type Update = PromptUpdate;
}

/// The face of the catalog kind whose spec is `S`.
pub struct Catalog<S>(PhantomData<S>);

/// Items discovered from a gateway: their upstream-owned fields are replaced by every
/// refresh, so only the operator's own fields may change.
fn guard_discovered<S: CatalogSpec>(
    item: &CatalogItem<S>,
    p: &ItemPatch<S>,
) -> Result<(), Problem> {
    if item.gateway_id.is_some()
        && (!p.spec.is_keep() || p.description.is_some() || p.uri.is_some())
    {
        return Err(Problem::invalid_field(
            "body",
            "this item is discovered from a gateway: only name, tags and enabled can change (the rest follows the upstream)",
        ));
    }
    Ok(())
}

impl<S: CatalogFace> Face for Catalog<S> {
    const OWNED: crate::store::identity::OwnedKind = match S::KIND {
        crate::model::CatalogKind::Tool => crate::store::identity::OwnedKind::Tool,
        crate::model::CatalogKind::Resource => crate::store::identity::OwnedKind::Resource,
        crate::model::CatalogKind::Prompt => crate::store::identity::OwnedKind::Prompt,
    };
    type View = S::View;
    type Create = S::Create;
    type Created = S::View;
    type Update = S::Update;

    async fn list(s: &AppState, q: ListQuery) -> Result<crate::model::Page<S::View>, ApiError> {
        let filter = ListFilter::try_from(q)?;
        Ok(s.store.list_items::<S>(&filter).await?.map(S::View::from))
    }

    async fn create(s: &AppState, body: S::Create) -> Result<S::View, ApiError> {
        let item: NewItem<S> = body.try_into()?;
        Ok(s.store.create_item(item).await?.into())
    }

    async fn get(s: &AppState, id: &str) -> Result<S::View, ApiError> {
        Ok(s.store.get_item::<S>(id).await?.into())
    }

    async fn update(s: &AppState, id: &str, body: S::Update) -> Result<S::View, ApiError> {
        let p: ItemPatch<S> = body.try_into()?;
        let cur = s.store.get_item::<S>(id).await?;
        guard_discovered(&cur, &p)?;
        Ok(s.store.update_item(id, p).await?.into())
    }

    async fn delete(s: &AppState, id: &str) -> Result<(), ApiError> {
        Ok(s.store.delete_item(S::KIND, id).await?)
    }

    async fn set_state(s: &AppState, id: &str, activate: bool) -> Result<S::View, ApiError> {
        let p = ItemPatch::<S> {
            enabled: Some(activate),
            ..Default::default()
        };
        Ok(s.store.update_item(id, p).await?.into())
    }
}

registry_face! {
    pub mod tools: Catalog<ToolSpec> {
        path: "/tools", tag: "tools",
        view: Tool, page: ToolPage, create: ToolCreate, created: Tool, update: ToolUpdate,
        list: (list_tools, "List tools.", []),
        create: (create_tool, "Define a tool by hand (a REST endpoint exposed as an MCP tool).", []),
        get: (get_tool, "Get a tool.", []),
        update: (update_tool, "Update a tool (partial). Discovered tools: name, tags and enabled only.", []),
        delete: (delete_tool, "Delete a tool.", []),
        state: (set_tool_state, "Enable or disable a tool. `/tools/{id}/toggle` is an alias.", []),
    }
}

registry_face! {
    pub mod resources: Catalog<ResourceSpec> {
        path: "/resources", tag: "resources",
        view: Resource, page: ResourcePage, create: ResourceCreate, created: Resource, update: ResourceUpdate,
        list: (list_resources, "List resources and resource templates.", []),
        create: (create_resource, "Define a resource by hand.", []),
        get: (get_resource, "Get a resource.", []),
        update: (update_resource, "Update a resource (partial).", []),
        delete: (delete_resource, "Delete a resource.", []),
        state: (set_resource_state, "Enable or disable a resource. `/resources/{id}/toggle` is an alias.", []),
    }
}

registry_face! {
    pub mod prompts: Catalog<PromptSpec> {
        path: "/prompts", tag: "prompts",
        view: Prompt, page: PromptPage, create: PromptCreate, created: Prompt, update: PromptUpdate,
        list: (list_prompts, "List prompts.", []),
        create: (create_prompt, "Define a prompt by hand.", []),
        get: (get_prompt, "Get a prompt.", []),
        update: (update_prompt, "Update a prompt (partial).", []),
        delete: (delete_prompt, "Delete a prompt.", []),
        state: (set_prompt_state, "Enable or disable a prompt. `/prompts/{id}/toggle` is an alias.", []),
    }
}
