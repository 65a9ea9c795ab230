//! The admin API: gRPC on a local Unix socket (mode 0600). Handlers convert
//! protobuf to domain types and call [`Ca`]; every [`CaError`] becomes a gRPC
//! status in one place, [`crate::api::status`].

use std::path::Path;
use std::sync::Arc;

use signet_proto::admin as pb;
use signet_proto::admin::admin_server::{Admin, AdminServer};
use tokio::net::{UnixListener, UnixStream};
use tonic::{Request, Response, Status};

use crate::api::convert;
use crate::api::status::{bounded, status};
use crate::registry::entry::EntryInput;
use crate::store::EntryFilter;
use crate::{Ca, CaError, KeyKind};

/// Longest ID or name an admin call takes (a SPIFFE ID is at most 2,048
/// bytes): a longer one is refused as such, not looked up and echoed back
/// in an error a client cannot even receive (gRPC carries the message in a
/// header).
pub(crate) const MAX_ADMIN_OBJECT: usize = 4096;

/// `PrepareKey`/`ActivateKey`'s `kind`.
fn parse_kind(kind: &str) -> Result<KeyKind, CaError> {
    match kind {
        "" | "x509" => Ok(KeyKind::X509),
        "jwt" => Ok(KeyKind::Jwt),
        other => Err(CaError::InvalidArgument(format!(
            "key kind {other:?}: use x509 or jwt"
        ))),
    }
}

/// The admin API's form of a key of either kind; `in_use` when it is the
/// one signing now.
fn any_key_to_pb(k: crate::AnyKey, in_use: bool) -> pb::SigningKey {
    match k {
        crate::AnyKey::X509(k) => x509_key_to_pb(k, in_use),
        crate::AnyKey::Jwt(k) => jwt_key_to_pb(k, in_use),
    }
}

/// The admin API's form of a JWT signing key.
fn jwt_key_to_pb(k: crate::store::JwtKeyRecord, in_use: bool) -> pb::SigningKey {
    pb::SigningKey {
        kind: "jwt".into(),
        in_use,
        status: k.journal.status.as_str().into(),
        not_before: k.journal.not_before,
        not_after: k.journal.not_after,
        replica: k.replica,
        detail: k.alg,
        tainted: k.journal.tainted,
        id: k.kid,
    }
}

/// The admin API's form of an X.509 signing key.
fn x509_key_to_pb(k: crate::store::CaKeyRecord, in_use: bool) -> pb::SigningKey {
    pb::SigningKey {
        kind: "x509".into(),
        in_use,
        status: k.journal.status.as_str().into(),
        not_before: k.journal.not_before,
        not_after: k.journal.not_after,
        replica: k.replica.unwrap_or_default(),
        detail: if k.self_signed {
            "self-signed root".into()
        } else {
            "intermediate".into()
        },
        tainted: k.journal.tainted,
        id: k.id,
    }
}

/// The tracing target of the admin audit log: filter on it (e.g.
/// `RUST_LOG=signet::audit=info`) to keep or ship the audit trail apart.
pub(crate) const AUDIT_TARGET: &str = "signet::audit";

/// The uid of the process on the other end of the admin socket.
fn caller_uid<T>(req: &Request<T>) -> Option<u32> {
    req.extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid())
}

/// The gRPC service implementation.
pub(crate) struct AdminService {
    ca: Arc<Ca>,
}

impl AdminService {
    /// A tonic server for `ca`.
    pub(crate) fn server(ca: Arc<Ca>) -> AdminServer<Self> {
        AdminServer::new(Self { ca })
    }

    /// Maps the result to a gRPC answer, counts it, and writes the audit
    /// record: one structured line per call on the `signet::audit` target
    /// with who (the caller's uid from the socket), what (method and
    /// object) and the result. Secrets (join tokens) are never part of it.
    fn finish<T>(
        &self,
        method: &str,
        caller: Option<u32>,
        object: &str,
        r: Result<T, CaError>,
    ) -> Result<Response<T>, Status> {
        let r = if object.len() > MAX_ADMIN_OBJECT {
            Err(Status::invalid_argument(format!(
                "the ID or name given is {} bytes long; IDs and names are at most {MAX_ADMIN_OBJECT} bytes",
                object.len()
            )))
        } else {
            r.map(Response::new).map_err(|e| status(&e))
        };
        let object = bounded(object, 256);
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.ca.metrics().admin_call(method, code);
        tracing::info!(
            target: AUDIT_TARGET,
            uid = caller.map_or(-1, i64::from),
            method,
            object = %object,
            result = ?code,
            error = r.as_ref().err().map(|s| s.message()).unwrap_or(""),
            "audit: admin call"
        );
        r
    }
}

fn entry_input(spec: Option<pb::EntrySpec>) -> Result<EntryInput, CaError> {
    let spec = spec.ok_or_else(|| CaError::InvalidArgument("entry spec is missing".into()))?;
    Ok(EntryInput {
        spiffe_id: spec.spiffe_id,
        parent_id: spec.parent_id,
        selectors: spec.selectors,
        x509_svid_ttl: spec.x509_svid_ttl_seconds,
        dns_names: spec.dns_names,
        admin: spec.admin,
        hint: spec.hint,
        jwt_svid_ttl: spec.jwt_svid_ttl_seconds,
    })
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_entry(
        &self,
        req: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let caller = caller_uid(&req);
        let spec = req.into_inner().spec;
        let object = spec
            .as_ref()
            .map(|s| s.spiffe_id.clone())
            .unwrap_or_default();
        let r = async {
            let input = entry_input(spec)?;
            let entry = self.ca.create_entry(&input).await?;
            tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spec.spiffe_id, parent_id = %entry.spec.parent_id, "entry created");
            Ok(convert::entry_to_admin_pb(&entry))
        }
        .await;
        self.finish("CreateEntry", caller, &object, r)
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let caller = caller_uid(&req);
        let req = req.into_inner();
        let filter = EntryFilter {
            parent_id: non_empty(req.parent_id),
            spiffe_id: non_empty(req.spiffe_id),
        };
        let r = self
            .ca
            .list_entries(&filter)
            .await
            .map(|entries| pb::ListEntriesResponse {
                entries: entries.iter().map(convert::entry_to_admin_pb).collect(),
            });
        self.finish("ListEntries", caller, "", r)
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let caller = caller_uid(&req);
        let id = req.into_inner().id;
        let r = self
            .ca
            .stored_entry(&id)
            .await
            .map(|e| convert::entry_to_admin_pb(&e));
        self.finish("GetEntry", caller, &id, r)
    }

    async fn update_entry(
        &self,
        req: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let caller = caller_uid(&req);
        let req = req.into_inner();
        let id = req.id.clone();
        let r = async {
            let input = entry_input(req.spec)?;
            let entry = self.ca.update_entry(&req.id, &input).await?;
            tracing::info!(entry_id = %entry.id, revision = entry.revision, "entry updated");
            Ok(convert::entry_to_admin_pb(&entry))
        }
        .await;
        self.finish("UpdateEntry", caller, &id, r)
    }

    async fn delete_entry(
        &self,
        req: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let caller = caller_uid(&req);
        let id = req.into_inner().id;
        let r = self.ca.delete_entry(&id).await;
        if r.is_ok() {
            tracing::info!(entry_id = %id, "entry deleted");
        }
        self.finish(
            "DeleteEntry",
            caller,
            &id,
            r.map(|_| pb::DeleteEntryResponse {}),
        )
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let caller = caller_uid(&req);
        let req = req.into_inner();
        let node = non_empty(req.node_name);
        let r = self
            .ca
            .create_join_token(req.ttl_seconds, node.as_deref())
            .await
            .map(|t| pb::JoinToken {
                token: t.token,
                expires_at: t.expires_at,
                agent_id: t.agent_id.to_string(),
            });
        // The token itself is a secret: the audit names its agent only.
        let object = r.as_ref().map(|t| t.agent_id.clone()).unwrap_or_default();
        self.finish("CreateJoinToken", caller, &object, r)
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = caller_uid(&req);
        let r = self
            .ca
            .list_agents()
            .await
            .map(|agents| pb::ListAgentsResponse {
                agents: agents.iter().map(convert::agent_to_pb).collect(),
            });
        self.finish("ListAgents", caller, "", r)
    }

    async fn list_endpoints(
        &self,
        req: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let caller = caller_uid(&req);
        let id = req.into_inner().spiffe_id;
        let filter = (!id.is_empty()).then_some(id.as_str());
        let endpoints = self
            .ca
            .endpoints(filter)
            .iter()
            .map(crate::registry::endpoint_publish::endpoint_to_pb)
            .collect();
        self.finish(
            "ListEndpoints",
            caller,
            &id,
            Ok(pb::ListEndpointsResponse { endpoints }),
        )
    }

    async fn ban_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let caller = caller_uid(&req);
        let id = req.into_inner().spiffe_id;
        let r = self
            .ca
            .ban_agent(&id)
            .await
            .map(|a| convert::agent_to_pb(&a));
        self.finish("BanAgent", caller, &id, r)
    }

    async fn evict_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        let caller = caller_uid(&req);
        let id = req.into_inner().spiffe_id;
        let r = self
            .ca
            .evict_agent(&id)
            .await
            .map(|_| pb::EvictAgentResponse {});
        self.finish("EvictAgent", caller, &id, r)
    }

    async fn list_signing_keys(
        &self,
        req: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        let caller = caller_uid(&req);
        let r = async {
            let now = signet_identity::x509_svid::unix_seconds(self.ca.clock.now());
            let x509_in_use = self.ca.authority().id.clone();
            let jwt_in_use = self.ca.jwt_signer().kid.clone();
            let (x509, jwt) = self.ca.signing_keys(now).await?;
            let mut keys: Vec<pb::SigningKey> = x509
                .into_iter()
                .map(|k| {
                    let in_use = k.id == x509_in_use;
                    x509_key_to_pb(k, in_use)
                })
                .collect();
            keys.extend(jwt.into_iter().map(|k| {
                let in_use = k.kid == jwt_in_use;
                jwt_key_to_pb(k, in_use)
            }));
            Ok::<_, CaError>(pb::ListSigningKeysResponse {
                keys,
                replica: self.ca.replica().to_owned(),
            })
        }
        .await;
        self.finish("ListSigningKeys", caller, "", r)
    }

    async fn prepare_key(
        &self,
        req: Request<pb::PrepareKeyRequest>,
    ) -> Result<Response<pb::SigningKey>, Status> {
        let caller = caller_uid(&req);
        let r = match parse_kind(&req.get_ref().kind) {
            Ok(kind) => self
                .ca
                .prepare_key(kind)
                .await
                .map(|k| any_key_to_pb(k, false)),
            Err(e) => Err(e),
        };
        let id = r.as_ref().map(|k| k.id.clone()).unwrap_or_default();
        self.finish("PrepareKey", caller, &id, r)
    }

    async fn activate_key(
        &self,
        req: Request<pb::ActivateKeyRequest>,
    ) -> Result<Response<pb::SigningKey>, Status> {
        let caller = caller_uid(&req);
        let r = match parse_kind(&req.get_ref().kind) {
            Ok(kind) => self
                .ca
                .activate_key(kind)
                .await
                .map(|k| any_key_to_pb(k, true)),
            Err(e) => Err(e),
        };
        let id = r.as_ref().map(|k| k.id.clone()).unwrap_or_default();
        self.finish("ActivateKey", caller, &id, r)
    }

    async fn taint_key(
        &self,
        req: Request<pb::TaintKeyRequest>,
    ) -> Result<Response<pb::SigningKey>, Status> {
        let caller = caller_uid(&req);
        let id = req.into_inner().id;
        let r = self
            .ca
            .taint_key(&id)
            .await
            .map(|k| any_key_to_pb(k, false));
        self.finish("TaintKey", caller, &id, r)
    }

    async fn revoke_key(
        &self,
        req: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::SigningKey>, Status> {
        let caller = caller_uid(&req);
        let r = req.into_inner();
        let result = self
            .ca
            .revoke_key(&r.id, r.force)
            .await
            .map(|k| any_key_to_pb(k, false));
        self.finish("RevokeKey", caller, &r.id, result)
    }

    async fn get_bundle(
        &self,
        req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::Bundle>, Status> {
        let caller = caller_uid(&req);
        let r = self.ca.bundle().await.map(|b| pb::Bundle {
            trust_domain: b.trust_domain().to_string(),
            x509_authorities: b.authorities().iter().map(|c| c.to_vec()).collect(),
            sequence: b.sequence,
            refresh_hint_seconds: b.refresh_hint_secs.unwrap_or(0) as i64,
            jwt_authorities: b
                .jwt_authorities()
                .iter()
                .map(|a| pb::JwtAuthority {
                    kid: a.kid().to_owned(),
                    public_key: a.spki_der().to_vec(),
                })
                .collect(),
        });
        self.finish("GetBundle", caller, "", r)
    }
}

/// Binds the admin socket: replaces a stale socket file (nobody listening),
/// refuses to replace a live one, and sets mode 0600 before serving.
pub(crate) async fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running CA", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Whether a connecting peer may use the admin API: root, or the user the CA
/// runs as. File mode 0600 already enforces this; the check also holds if an
/// operator loosens the mode by mistake.
pub(crate) fn peer_allowed(stream: &UnixStream, own_uid: u32) -> bool {
    match stream.peer_cred() {
        Ok(cred) => cred.uid() == 0 || cred.uid() == own_uid,
        Err(_) => false,
    }
}
