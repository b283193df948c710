//! Registry objects owned by Kubernetes custom resources: which gateway an `MCPBackend` is,
//! which server an `MCPVirtualServer` is. The controller creates an object and its owner row
//! in one transaction; the REST API reads the row to refuse changes (`api::k8s_owned`).

use sqlx::Row;

use super::{Store, StoreError, now};
use crate::model::{Gateway, NewGateway, NewServer, Server};

/// The kinds of registry object a resource can own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedObject {
    /// A gateway (owned by an `MCPBackend`).
    Gateway,
    /// A virtual server (owned by an `MCPVirtualServer`).
    Server,
}

impl OwnedObject {
    fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Server => "server",
        }
    }
}

/// The resource that owns a registry object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sOwner {
    /// Its kind (`MCPBackend`, `MCPVirtualServer`).
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid: a resource deleted and created again under the same name is another owner.
    pub uid: String,
}

impl std::fmt::Display for K8sOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

fn row_to_owner(r: &sqlx::any::AnyRow) -> Result<K8sOwner, StoreError> {
    Ok(K8sOwner {
        kind: r.try_get("cr_kind")?,
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
        uid: r.try_get("uid")?,
    })
}

impl Store {
    /// The resource owning a registry object, if any.
    pub async fn k8s_owner(
        &self,
        object: OwnedObject,
        id: &str,
    ) -> Result<Option<K8sOwner>, StoreError> {
        let row = sqlx::query(
            "SELECT cr_kind, namespace, name, uid FROM k8s_owners WHERE object_kind = $1 AND object_id = $2",
        )
        .bind(object.as_str())
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(row_to_owner).transpose()
    }

    /// The registry object a resource owns: `(id, owner)`.
    pub async fn k8s_owned(
        &self,
        object: OwnedObject,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, K8sOwner)>, StoreError> {
        let row = sqlx::query(
            "SELECT object_id, cr_kind, namespace, name, uid FROM k8s_owners \
             WHERE object_kind = $1 AND cr_kind = $2 AND namespace = $3 AND name = $4",
        )
        .bind(object.as_str())
        .bind(kind)
        .bind(namespace)
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((r.try_get("object_id")?, row_to_owner(&r)?)))
            .transpose()
    }

    /// Creates a gateway owned by `owner` (no discovery: the controller asks federation
    /// afterwards), gateway and owner row in one transaction.
    pub async fn create_owned_gateway(
        &self,
        g: NewGateway,
        owner: &K8sOwner,
    ) -> Result<Gateway, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = self.insert_gateway_tx(&mut tx, g).await?;
        insert_owner(&mut tx, OwnedObject::Gateway, &id, owner).await?;
        tx.commit().await?;
        self.get_gateway(&id).await
    }

    /// Creates a virtual server owned by `owner`, server and owner row in one transaction.
    pub async fn create_owned_server(
        &self,
        s: NewServer,
        owner: &K8sOwner,
    ) -> Result<Server, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = self.insert_server_tx(&mut tx, s).await?;
        insert_owner(&mut tx, OwnedObject::Server, &id, owner).await?;
        tx.commit().await?;
        self.get_server(&id).await
    }

    /// Deletes an owned object and its owner row (idempotent: a missing object is fine).
    pub async fn delete_owned(&self, object: OwnedObject, id: &str) -> Result<(), StoreError> {
        let deleted = match object {
            OwnedObject::Gateway => self.delete_gateway(id).await,
            OwnedObject::Server => self.delete_server(id).await,
        };
        match deleted {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM k8s_owners WHERE object_kind = $1 AND object_id = $2")
            .bind(object.as_str())
            .bind(id)
            .execute(tx.conn())
            .await?;
        tx.commit_quiet().await
    }
}

async fn insert_owner(
    tx: &mut super::WriteTx<'_>,
    object: OwnedObject,
    id: &str,
    owner: &K8sOwner,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO k8s_owners (object_kind, object_id, cr_kind, namespace, name, uid, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(object.as_str())
    .bind(id)
    .bind(&owner.kind)
    .bind(&owner.namespace)
    .bind(&owner.name)
    .bind(&owner.uid)
    .bind(now())
    .execute(tx.conn())
    .await
    .map_err(super::map_unique("owned object", &owner.to_string()))?;
    Ok(())
}
