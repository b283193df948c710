//! What the xDS server serves: a versioned [`ResourceSet`] of named, content-hashed
//! resources per [`TypeUrl`].

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash as _, Hasher as _};
use std::str::FromStr;

use envoy_types::pb::google::protobuf::Any;

/// The resource types the server knows. A closed set: a request for any other type URL
/// is ignored (logged), never answered with guesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    RouteConfiguration,
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    ClusterLoadAssignment,
    /// `envoy.config.core.v3.TypedExtensionConfig` (ECDS: the wasm filter's configuration).
    ExtensionConfig,
}

impl TypeUrl {
    /// Every type, in the order Envoy wants them updated (clusters before listeners).
    pub const ALL: [TypeUrl; 5] = [
        TypeUrl::Cluster,
        TypeUrl::ClusterLoadAssignment,
        TypeUrl::Listener,
        TypeUrl::RouteConfiguration,
        TypeUrl::ExtensionConfig,
    ];

    /// The full type URL as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::ExtensionConfig => {
                "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
            }
        }
    }

    /// A short, low-cardinality label for logs and metrics (`lds`, `rds`, `cds`, `eds`, `ecds`).
    pub const fn label(self) -> &'static str {
        match self {
            TypeUrl::Listener => "lds",
            TypeUrl::RouteConfiguration => "rds",
            TypeUrl::Cluster => "cds",
            TypeUrl::ClusterLoadAssignment => "eds",
            TypeUrl::ExtensionConfig => "ecds",
        }
    }

    /// Whether a subscription of this type may be a wildcard (every resource the server
    /// has): only listeners and clusters, as in Envoy.
    pub const fn supports_wildcard(self) -> bool {
        matches!(self, TypeUrl::Listener | TypeUrl::Cluster)
    }
}

impl fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A type URL the server does not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown xDS type URL {0:?}")]
pub struct UnknownTypeUrl(pub String);

impl FromStr for TypeUrl {
    type Err = UnknownTypeUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TypeUrl::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTypeUrl(s.to_owned()))
    }
}

/// Why a resource cannot join a [`ResourceSet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceSetError {
    /// A resource without a name cannot be subscribed to.
    #[error("a {type_url} resource has an empty name")]
    EmptyName {
        /// The resource's type.
        type_url: TypeUrl,
    },
    /// Two resources of one type share a name.
    #[error("duplicate {type_url} resource {name:?}")]
    Duplicate {
        /// The resource's type.
        type_url: TypeUrl,
        /// The name given twice.
        name: String,
    },
    /// The `Any`'s type URL is not the one the resource was filed under.
    #[error("resource {name:?} filed as {type_url} holds a {actual:?}")]
    TypeMismatch {
        /// The type it was filed under.
        type_url: TypeUrl,
        /// The resource's name.
        name: String,
        /// The `Any`'s type URL.
        actual: String,
    },
    /// A message type the server does not serve.
    #[error(transparent)]
    UnknownType(#[from] UnknownTypeUrl),
}

/// One named resource, encoded, with a hash of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    name: String,
    body: Any,
    hash: u64,
}

impl Resource {
    fn new(name: String, body: Any) -> Self {
        // SipHash with fixed keys (`DefaultHasher::new`) is deterministic across processes
        // of one build, which is all the hash is compared against: what this process sent,
        // or what an Envoy reports after reconnecting (a different build at worst causes
        // one needless resend). A cryptographic digest would cost a dependency and time
        // on 10,000-tool ECDS payloads for no gain.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.type_url.hash(&mut h);
        body.value.hash(&mut h);
        Resource {
            name,
            body,
            hash: h.finish(),
        }
    }

    /// The resource's name (what clients subscribe to).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The encoded resource.
    pub fn body(&self) -> &Any {
        &self.body
    }

    /// Hash of the encoded content: equal hashes mean an unchanged resource.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The per-resource version sent in delta responses (the content hash, hex).
    pub fn version(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

/// A complete, versioned configuration: every resource of every type, by name.
///
/// Immutable once built; share it as `Arc<ResourceSet>` through a `watch` channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSet {
    version: String,
    types: BTreeMap<TypeUrl, BTreeMap<String, Resource>>,
}

impl ResourceSet {
    /// Starts a set with the given version (sent to clients as `version_info`).
    pub fn builder(version: impl Into<String>) -> ResourceSetBuilder {
        ResourceSetBuilder {
            set: ResourceSet {
                version: version.into(),
                types: BTreeMap::new(),
            },
        }
    }

    /// The set's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resources of one type, by name (sorted).
    pub fn resources(&self, type_url: TypeUrl) -> impl Iterator<Item = &Resource> {
        self.types
            .get(&type_url)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// One resource.
    pub fn get(&self, type_url: TypeUrl, name: &str) -> Option<&Resource> {
        self.types.get(&type_url).and_then(|m| m.get(name))
    }

    /// How many resources of one type the set holds.
    pub fn len(&self, type_url: TypeUrl) -> usize {
        self.types.get(&type_url).map_or(0, BTreeMap::len)
    }

    /// Whether the set holds no resource at all.
    pub fn is_empty(&self) -> bool {
        self.types.values().all(BTreeMap::is_empty)
    }

    /// What changed from `previous` to `self` (by content hash), per type.
    pub fn diff(&self, previous: &ResourceSet) -> ResourceDiff {
        let mut diff = ResourceDiff::default();
        for t in TypeUrl::ALL {
            for r in self.resources(t) {
                match previous.get(t, &r.name) {
                    Some(old) if old.hash == r.hash => {}
                    Some(_) => diff.changed.push((t, r.name.clone())),
                    None => diff.added.push((t, r.name.clone())),
                }
            }
            for r in previous.resources(t) {
                if self.get(t, &r.name).is_none() {
                    diff.removed.push((t, r.name.clone()));
                }
            }
        }
        diff
    }
}

/// The difference between two [`ResourceSet`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceDiff {
    /// Resources only in the new set.
    pub added: Vec<(TypeUrl, String)>,
    /// Resources in both sets whose content differs.
    pub changed: Vec<(TypeUrl, String)>,
    /// Resources only in the old set.
    pub removed: Vec<(TypeUrl, String)>,
}

impl ResourceDiff {
    /// Whether the two sets hold the same resources.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Builds a [`ResourceSet`], refusing duplicates and mistyped resources.
#[derive(Debug, Clone)]
pub struct ResourceSetBuilder {
    set: ResourceSet,
}

impl ResourceSetBuilder {
    /// Adds an already-encoded resource under `type_url`; the `Any`'s own type URL must match.
    pub fn insert_any(
        &mut self,
        type_url: TypeUrl,
        name: impl Into<String>,
        body: Any,
    ) -> Result<&mut Self, ResourceSetError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ResourceSetError::EmptyName { type_url });
        }
        if body.type_url != type_url.as_str() {
            return Err(ResourceSetError::TypeMismatch {
                type_url,
                name,
                actual: body.type_url,
            });
        }
        let by_name = self.set.types.entry(type_url).or_default();
        if by_name.contains_key(&name) {
            return Err(ResourceSetError::Duplicate { type_url, name });
        }
        by_name.insert(name.clone(), Resource::new(name, body));
        Ok(self)
    }

    /// Encodes `message` and adds it; its type (`M::type_url()`) must be one the server serves.
    pub fn insert<M: prost::Name>(
        &mut self,
        name: impl Into<String>,
        message: &M,
    ) -> Result<&mut Self, ResourceSetError> {
        let type_url: TypeUrl = M::type_url().parse()?;
        let body = Any {
            type_url: type_url.as_str().to_owned(),
            value: message.encode_to_vec(),
        };
        self.insert_any(type_url, name, body)
    }

    /// The finished set.
    pub fn build(self) -> ResourceSet {
        self.set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;

    fn cluster(name: &str, timeout_s: i64) -> Cluster {
        Cluster {
            name: name.to_owned(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout_s,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn type_urls_round_trip_and_match_prost_names() {
        for t in TypeUrl::ALL {
            assert_eq!(t.as_str().parse::<TypeUrl>(), Ok(t));
        }
        assert_eq!(
            <Cluster as prost::Name>::type_url().parse::<TypeUrl>(),
            Ok(TypeUrl::Cluster)
        );
        assert_eq!(
            <TypedExtensionConfig as prost::Name>::type_url().parse::<TypeUrl>(),
            Ok(TypeUrl::ExtensionConfig)
        );
        assert!("type.googleapis.com/x.Y".parse::<TypeUrl>().is_err());
    }

    #[test]
    fn builder_rejects_bad_resources() {
        let mut b = ResourceSet::builder("v1");
        b.insert("a", &cluster("a", 1)).unwrap();
        let cases = [
            (
                "duplicate",
                b.clone().insert("a", &cluster("a", 2)).err(),
                Some(ResourceSetError::Duplicate {
                    type_url: TypeUrl::Cluster,
                    name: "a".into(),
                }),
            ),
            (
                "empty name",
                b.clone().insert("", &cluster("", 2)).err(),
                Some(ResourceSetError::EmptyName {
                    type_url: TypeUrl::Cluster,
                }),
            ),
            (
                "mistyped any",
                b.clone()
                    .insert_any(
                        TypeUrl::Listener,
                        "l",
                        Any {
                            type_url: TypeUrl::Cluster.as_str().into(),
                            value: vec![],
                        },
                    )
                    .err(),
                Some(ResourceSetError::TypeMismatch {
                    type_url: TypeUrl::Listener,
                    name: "l".into(),
                    actual: TypeUrl::Cluster.as_str().into(),
                }),
            ),
        ];
        for (case, got, want) in cases {
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn hashes_detect_changes_only() {
        let build = |t: i64| {
            let mut b = ResourceSet::builder("v");
            b.insert("a", &cluster("a", 1)).unwrap();
            b.insert("b", &cluster("b", t)).unwrap();
            b.build()
        };
        let (one, same, other) = (build(1), build(1), build(2));
        assert!(same.diff(&one).is_empty());
        let d = other.diff(&one);
        assert_eq!(d.changed, vec![(TypeUrl::Cluster, "b".to_owned())]);
        assert!(d.added.is_empty() && d.removed.is_empty());
        assert_eq!(
            one.get(TypeUrl::Cluster, "a").unwrap().hash(),
            other.get(TypeUrl::Cluster, "a").unwrap().hash()
        );
        let removed = ResourceSet::builder("v").build().diff(&one);
        assert_eq!(removed.removed.len(), 2);
    }
}
