//! `/servers`: virtual servers.

use super::face::{Face, registry_face};
use super::types::{ListQuery, Server, ServerCreate, ServerPage, ServerUpdate};
use super::{ApiError, AppState};
use crate::model::{ListFilter, NewServer, Page, ServerPatch};

/// The face of virtual servers.
pub struct Servers;

impl Face for Servers {
    const OWNED: crate::store::identity::OwnedKind = crate::store::identity::OwnedKind::Server;
    type View = Server;
    type Create = ServerCreate;
    type Created = Server;
    type Update = ServerUpdate;

    async fn list(s: &AppState, q: ListQuery) -> Result<Page<Server>, ApiError> {
        let filter = ListFilter::try_from(q)?;
        Ok(s.store.list_servers(&filter).await?.map(Server::from))
    }

    async fn create(s: &AppState, b: ServerCreate) -> Result<Server, ApiError> {
        Ok(s.store.create_server(NewServer::try_from(b)?).await?.into())
    }

    async fn get(s: &AppState, id: &str) -> Result<Server, ApiError> {
        Ok(s.store.get_server(id).await?.into())
    }

    async fn update(s: &AppState, id: &str, b: ServerUpdate) -> Result<Server, ApiError> {
        Ok(s.store
            .update_server(id, ServerPatch::try_from(b)?)
            .await?
            .into())
    }

    async fn delete(s: &AppState, id: &str) -> Result<(), ApiError> {
        Ok(s.store.delete_server(id).await?)
    }

    async fn set_state(s: &AppState, id: &str, activate: bool) -> Result<Server, ApiError> {
        let p = ServerPatch {
            enabled: Some(activate),
            ..Default::default()
        };
        Ok(s.store.update_server(id, p).await?.into())
    }
}

registry_face! {
    pub mod handlers: Servers {
        path: "/servers", tag: "servers",
        view: Server, page: ServerPage, create: ServerCreate, created: Server, update: ServerUpdate,
        list: (list, "List virtual servers.", []),
        create: (create, "Create a virtual server from chosen tools, resources and prompts.", []),
        get: (get, "Get a virtual server.", []),
        update: (update, "Update a virtual server (partial; association lists replace the stored ones).", []),
        delete: (delete, "Delete a virtual server.", []),
        state: (set_state, "Enable or disable a virtual server. `/servers/{id}/toggle` is an alias.", []),
    }
}
