//! One face per registry kind: a kind implements [`Face`] (what list, create, get, update,
//! delete and enable/disable mean for it), and [`registry_face!`] turns that into the
//! annotated axum handlers, their OpenAPI fragment and their routes. utoipa needs one
//! concrete, annotated function per operation; the macro writes those, so adding a kind is
//! its types, its `Face` impl, and one line:
//!
//! ```ignore
//! registry_face!(pub mod agents: AgentFace, "/agents", "agents", "agent", "agents",
//!                view = Agent, page = AgentPage, create = AgentCreate, update = AgentUpdate);
//! ```
//!
//! The kinds that predate the macro spell out their operation ids, summaries and extra
//! responses (the long form) so that `docs/openapi.json` stays byte for byte as it was.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::ListQuery;
use super::{ApiError, AppState};
use crate::model::Page;
use crate::store::identity::OwnedKind;

/// What a create answers with: it names the new entry's id (to give it its owner).
pub trait HasId {
    /// The entry's id.
    fn id(&self) -> &str;
}

impl HasId for super::types::GatewaySync {
    fn id(&self) -> &str {
        &self.gateway.id
    }
}

macro_rules! has_id {
    ($($t:ty),*) => {$(
        impl HasId for $t {
            fn id(&self) -> &str {
                &self.id
            }
        }
    )*};
}
has_id!(
    super::types::Tool,
    super::types::Resource,
    super::types::Prompt,
    super::types::Server
);

/// What the API does for one registry kind.
pub trait Face: Send + Sync + 'static {
    /// Which owned kind it is (for access checks and owners).
    const OWNED: OwnedKind;
    /// How one entry is shown.
    type View: Serialize + Send + 'static;
    /// Body of a create.
    type Create: DeserializeOwned + Send + 'static;
    /// Answer of a create (the view, or more).
    type Created: Serialize + HasId + Send + 'static;
    /// Body of an update.
    type Update: DeserializeOwned + Send + 'static;

    /// A page of entries.
    fn list(
        s: &AppState,
        q: ListQuery,
    ) -> impl Future<Output = Result<Page<Self::View>, ApiError>> + Send;
    /// Creates an entry.
    fn create(
        s: &AppState,
        body: Self::Create,
    ) -> impl Future<Output = Result<Self::Created, ApiError>> + Send;
    /// One entry.
    fn get(s: &AppState, id: &str) -> impl Future<Output = Result<Self::View, ApiError>> + Send;
    /// A partial update.
    fn update(
        s: &AppState,
        id: &str,
        body: Self::Update,
    ) -> impl Future<Output = Result<Self::View, ApiError>> + Send;
    /// Deletes an entry.
    fn delete(s: &AppState, id: &str) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Enables or disables an entry.
    fn set_state(
        s: &AppState,
        id: &str,
        activate: bool,
    ) -> impl Future<Output = Result<Self::View, ApiError>> + Send;
}

/// Emits the handlers, OpenAPI fragment (`Doc`) and routes (`routes()`) of one kind in a
/// module of their own. Short form: see the module documentation. Long form: every
/// operation id, summary and extra response spelled out.
macro_rules! registry_face {
    // Short form: names and summaries derived from the kind's nouns.
    (
        $vis:vis mod $module:ident: $face:ty, $path:literal, $tag:literal, $one:literal, $many:literal,
        view = $view:ty, page = $page:ty, create = $create:ty, update = $update:ty $(,)?
    ) => {
        registry_face! {
            $vis mod $module: $face {
                path: $path, tag: $tag,
                view: $view, page: $page, create: $create, created: $view, update: $update,
                list: (list, concat!("List ", $many, "."), []),
                create: (create, concat!("Create a ", $one, "."), []),
                get: (get, concat!("Get a ", $one, "."), []),
                update: (update, concat!("Update a ", $one, " (partial)."), []),
                delete: (delete, concat!("Delete a ", $one, "."), []),
                state: (set_state, concat!("Enable or disable a ", $one, ". `", $path, "/{id}/toggle` is an alias."), []),
            }
        }
    };
    // Long form.
    (
        $vis:vis mod $module:ident: $face:ty {
            path: $path:literal, tag: $tag:literal,
            view: $view:ty, page: $page:ty, create: $create:ty, created: $created:ty, update: $update:ty,
            list: ($list:ident, $list_doc:expr, [$($list_extra:tt)*]),
            create: ($new:ident, $create_doc:expr, [$($create_extra:tt)*]),
            get: ($get:ident, $get_doc:expr, [$($get_extra:tt)*]),
            update: ($upd:ident, $update_doc:expr, [$($update_extra:tt)*]),
            delete: ($del:ident, $delete_doc:expr, [$($delete_extra:tt)*]),
            state: ($state:ident, $state_doc:expr, [$($state_extra:tt)*]) $(,)?
        }
    ) => {
        #[doc = concat!("`", $path, "`: handlers, OpenAPI fragment and routes (see `api::face`).")]
        $vis mod $module {
            use axum::Json;
            use axum::extract::{Path, State};
            use axum::http::StatusCode;
            use utoipa::OpenApi as _;

            #[allow(unused_imports)]
            use super::*;
            use $crate::api::problem::{ApiJson, ApiQuery};
            use $crate::api::types::{ListQuery, StateQuery};
            use $crate::api::{ApiError, AppState, Problem};

            /// The list operation.
            #[utoipa::path(get, path = $path, tag = $tag, summary = $list_doc, params(ListQuery),
                responses((status = 200, body = $page),
                          $($list_extra)*
                          (status = 422, body = Problem, content_type = "application/problem+json")))]
            pub async fn $list(
                State(s): State<AppState>,
                axum::Extension(scope): axum::Extension<$crate::auth::rbac::ListScope>,
                ApiQuery(mut q): ApiQuery<ListQuery>,
            ) -> Result<Json<$page>, ApiError> {
                q.visible_to = Some(scope);
                Ok(Json(<$face as $crate::api::face::Face>::list(&s, q).await?.into()))
            }

            /// The create operation.
            #[utoipa::path(post, path = $path, tag = $tag, summary = $create_doc, request_body = $create,
                params($crate::api::types::OwnerQuery),
                responses((status = 201, body = $created),
                          (status = 409, body = Problem, content_type = "application/problem+json"),
                          $($create_extra)*
                          (status = 422, body = Problem, content_type = "application/problem+json")))]
            pub async fn $new(
                State(s): State<AppState>,
                axum::Extension(owner): axum::Extension<$crate::api::access::NewOwner>,
                ApiJson(b): ApiJson<$create>,
            ) -> Result<(StatusCode, Json<$created>), ApiError> {
                let created = <$face as $crate::api::face::Face>::create(&s, b).await?;
                // A second write: should it fail, the entry stays with the `global` team
                // (invisible to its creator unless a platform admin), never with more readers.
                s.store
                    .set_ownership(
                        <$face as $crate::api::face::Face>::OWNED,
                        $crate::api::face::HasId::id(&created),
                        &owner.0,
                    )
                    .await?;
                Ok((StatusCode::CREATED, Json(created)))
            }

            /// The get operation.
            #[utoipa::path(get, path = concat!($path, "/{id}"), tag = $tag, summary = $get_doc,
                params(("id" = String, Path)),
                responses((status = 200, body = $view),
                          $($get_extra)*
                          (status = 404, body = Problem, content_type = "application/problem+json")))]
            pub async fn $get(
                State(s): State<AppState>,
                Path(id): Path<String>,
            ) -> Result<Json<$view>, ApiError> {
                Ok(Json(<$face as $crate::api::face::Face>::get(&s, &id).await?))
            }

            /// The update operation.
            #[utoipa::path(put, path = concat!($path, "/{id}"), tag = $tag, summary = $update_doc,
                params(("id" = String, Path)), request_body = $update,
                responses((status = 200, body = $view),
                          (status = 404, body = Problem, content_type = "application/problem+json"),
                          (status = 409, body = Problem, content_type = "application/problem+json"),
                          $($update_extra)*
                          (status = 422, body = Problem, content_type = "application/problem+json")))]
            pub async fn $upd(
                State(s): State<AppState>,
                Path(id): Path<String>,
                ApiJson(b): ApiJson<$update>,
            ) -> Result<Json<$view>, ApiError> {
                Ok(Json(<$face as $crate::api::face::Face>::update(&s, &id, b).await?))
            }

            /// The delete operation.
            #[utoipa::path(delete, path = concat!($path, "/{id}"), tag = $tag, summary = $delete_doc,
                params(("id" = String, Path)),
                responses((status = 204),
                          $($delete_extra)*
                          (status = 404, body = Problem, content_type = "application/problem+json")))]
            pub async fn $del(
                State(s): State<AppState>,
                Path(id): Path<String>,
            ) -> Result<StatusCode, ApiError> {
                <$face as $crate::api::face::Face>::delete(&s, &id).await?;
                Ok(StatusCode::NO_CONTENT)
            }

            /// The enable/disable operation (`/toggle` is an alias route).
            #[utoipa::path(post, path = concat!($path, "/{id}/state"), tag = $tag, summary = $state_doc,
                params(("id" = String, Path), StateQuery),
                responses((status = 200, body = $view),
                          $($state_extra)*
                          (status = 404, body = Problem, content_type = "application/problem+json")))]
            pub async fn $state(
                State(s): State<AppState>,
                Path(id): Path<String>,
                ApiQuery(q): ApiQuery<StateQuery>,
            ) -> Result<Json<$view>, ApiError> {
                Ok(Json(<$face as $crate::api::face::Face>::set_state(&s, &id, q.activate).await?))
            }

            /// Who owns an entry.
            #[utoipa::path(get, path = concat!($path, "/{id}/owner"), tag = $tag,
                summary = "Who owns the entry, and who sees it.",
                params(("id" = String, Path)),
                responses((status = 200, body = $crate::api::identity::OwnerView),
                          (status = 404, body = Problem, content_type = "application/problem+json")))]
            pub async fn get_owner(
                State(s): State<AppState>,
                Path(id): Path<String>,
            ) -> Result<Json<$crate::api::identity::OwnerView>, ApiError> {
                Ok(Json($crate::api::identity::get_owner(&s, <$face as $crate::api::face::Face>::OWNED, &id).await?))
            }

            /// Moves an entry to another team, or changes who sees it.
            #[utoipa::path(put, path = concat!($path, "/{id}/owner"), tag = $tag,
                summary = "Move the entry to another team, or change who sees it (the caller needs the create permission of the kind in the new team).",
                params(("id" = String, Path)), request_body = $crate::api::identity::OwnerView,
                responses((status = 200, body = $crate::api::identity::OwnerView),
                          (status = 403, body = Problem, content_type = "application/problem+json"),
                          (status = 404, body = Problem, content_type = "application/problem+json"),
                          (status = 409, body = Problem, content_type = "application/problem+json"),
                          (status = 422, body = Problem, content_type = "application/problem+json")))]
            pub async fn set_owner(
                State(s): State<AppState>,
                axum::Extension(p): axum::Extension<$crate::auth::rbac::Principal>,
                Path(id): Path<String>,
                ApiJson(b): ApiJson<$crate::api::identity::OwnerView>,
            ) -> Result<Json<$crate::api::identity::OwnerView>, ApiError> {
                Ok(Json($crate::api::identity::set_owner(&s, &p, <$face as $crate::api::face::Face>::OWNED, &id, b).await?))
            }

            /// This kind's part of the OpenAPI document.
            #[derive(utoipa::OpenApi)]
            #[openapi(paths($list, $new, $get, $upd, $del, $state, get_owner, set_owner))]
            pub struct Doc;

            /// This kind's OpenAPI paths and schemas.
            pub fn openapi() -> utoipa::openapi::OpenApi {
                Doc::openapi()
            }

            /// This kind's routes.
            pub fn routes() -> axum::Router<AppState> {
                // Fully qualified: a kind's handlers may be named `get` themselves.
                axum::Router::new()
                    .route($path, axum::routing::get($list).post($new))
                    .route(
                        concat!($path, "/{id}"),
                        axum::routing::get($get).put($upd).delete($del),
                    )
                    .route(concat!($path, "/{id}/state"), axum::routing::post($state))
                    .route(concat!($path, "/{id}/toggle"), axum::routing::post($state))
                    .route(
                        concat!($path, "/{id}/owner"),
                        axum::routing::get(get_owner).put(set_owner),
                    )
            }
        }
    };
}

pub(crate) use registry_face;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! A kind added the short way: its types, its `Face`, one macro line.

    use serde::{Deserialize, Serialize};
    use utoipa::ToSchema;

    use super::Face;
    use crate::api::types::ListQuery;
    use crate::api::{ApiError, AppState};
    use crate::model::Page;

    /// A widget.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    pub struct Widget {
        /// Id.
        pub id: String,
    }

    /// A page of widgets.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct WidgetPage {
        /// Items.
        pub items: Vec<Widget>,
    }

    impl From<Page<Widget>> for WidgetPage {
        fn from(p: Page<Widget>) -> Self {
            WidgetPage { items: p.items }
        }
    }

    /// Body of a widget create or update.
    #[derive(Debug, Deserialize, ToSchema)]
    pub struct WidgetBody {
        /// Id.
        pub id: String,
    }

    /// The widget face.
    pub struct Widgets;

    impl super::HasId for Widget {
        fn id(&self) -> &str {
            &self.id
        }
    }

    impl Face for Widgets {
        const OWNED: crate::store::identity::OwnedKind = crate::store::identity::OwnedKind::Tool;
        type View = Widget;
        type Create = WidgetBody;
        type Created = Widget;
        type Update = WidgetBody;

        async fn list(_: &AppState, _: ListQuery) -> Result<Page<Widget>, ApiError> {
            Ok(Page {
                items: vec![],
                next_cursor: None,
            })
        }
        async fn create(_: &AppState, b: WidgetBody) -> Result<Widget, ApiError> {
            Ok(Widget { id: b.id })
        }
        async fn get(_: &AppState, id: &str) -> Result<Widget, ApiError> {
            Ok(Widget { id: id.into() })
        }
        async fn update(_: &AppState, id: &str, _: WidgetBody) -> Result<Widget, ApiError> {
            Ok(Widget { id: id.into() })
        }
        async fn delete(_: &AppState, _: &str) -> Result<(), ApiError> {
            Ok(())
        }
        async fn set_state(_: &AppState, id: &str, _: bool) -> Result<Widget, ApiError> {
            Ok(Widget { id: id.into() })
        }
    }

    registry_face!(pub mod widgets: Widgets, "/widgets", "widgets", "widget", "widgets",
        view = Widget, page = WidgetPage, create = WidgetBody, update = WidgetBody);

    #[test]
    fn the_short_form_emits_every_operation_and_route() {
        let doc = serde_json::to_value(widgets::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut got: Vec<&String> = paths.keys().collect();
        got.sort();
        assert_eq!(
            got,
            [
                "/widgets",
                "/widgets/{id}",
                "/widgets/{id}/owner",
                "/widgets/{id}/state"
            ]
        );
        assert_eq!(paths["/widgets"]["get"]["summary"], "List widgets.");
        assert_eq!(paths["/widgets"]["post"]["summary"], "Create a widget.");
        assert_eq!(
            paths["/widgets/{id}/state"]["post"]["summary"],
            "Enable or disable a widget. `/widgets/{id}/toggle` is an alias."
        );
        for method in ["get", "put", "delete"] {
            assert!(paths["/widgets/{id}"].get(method).is_some(), "{method}");
        }
        assert!(doc["components"]["schemas"].get("WidgetPage").is_some());
        // The routes exist (an unknown method on them would be 405, a missing route 404).
        let _router: axum::Router<AppState> = widgets::routes();
    }
}
