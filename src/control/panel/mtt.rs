//! Our own panel protocol (`-panel-kind mtt`), documented in the README for panel
//! authors: what a full sync, a billing report and opt 5's client addresses are, over
//! three URLs. With `-panel-token`, every request carries `Authorization: Bearer TOKEN`;
//! with `-node-id`, the query parameter `node_id`.
//!
//! - `GET {URL}/users`: `{"args_bunch":[...]}` exactly as full sync (opt 4) takes it,
//!   limits included; `ETag` / `If-None-Match`, 304 when unchanged.
//! - `POST {URL}/traffic`: `{"report_id":"17","users":[{"path","bytes_up","bytes_down",
//!   "tunnels_opened"}]}`, the billing report of opt 7; a 2xx acknowledges it (opt 8),
//!   anything else leaves it to be reported again, with what came since, under a new id.
//! - `POST {URL}/alive`: `{"alive":{"/path":["203.0.113.7", ...]}}`, each user's client
//!   IP addresses with tunnels open now.

use serde_json::{json, Map, Value};

use super::{ControllerLink, Failure, Fetched, Http, Protocol, Pulled};
use crate::control::command::parse_user_list;

/// The state of the mtt protocol between exchanges.
pub(crate) struct Mtt {
    /// The ETag of the list last applied, sent as `If-None-Match`. Kept only once the list
    /// is applied: a refused or failed list is fetched whole again.
    etag: Option<String>,
    /// -panel-max-remove, in thousandths.
    max_remove_permille: u32,
}

impl Mtt {
    pub(crate) fn new(max_remove_permille: u32) -> Mtt {
        Mtt {
            etag: None,
            max_remove_permille,
        }
    }
}

impl Protocol for Mtt {
    fn pull(&mut self, http: &Http, controller: &ControllerLink) -> Result<Pulled, Failure> {
        let (bytes, etag) = match http.get("/users", self.etag.as_deref())? {
            Fetched::NotModified => return Ok(Pulled::Unchanged),
            Fetched::Body { bytes, etag } => (bytes, etag),
        };
        let users = parse_user_list(&bytes).map_err(Failure::BadBody)?;
        controller.sync(users, self.max_remove_permille)?;
        self.etag = etag;
        Ok(Pulled::Applied)
    }

    fn push(&mut self, http: &Http, controller: &ControllerLink) -> Result<bool, Failure> {
        let (id, lines) = controller.report()?;
        // An empty report is sent too: the panel learns the node is alive.
        let body = json!({"report_id": id, "users": lines});
        http.post("/traffic", &body)?;
        controller.acknowledge(id)?;
        Ok(true)
    }

    fn alive(&mut self, http: &Http, controller: &ControllerLink) -> Result<bool, Failure> {
        let alive: Map<String, Value> = controller
            .clients()?
            .into_iter()
            .map(|(path, ips)| {
                let ips = ips.iter().map(|ip| Value::from(ip.to_string())).collect();
                (path, Value::Array(ips))
            })
            .collect();
        http.post("/alive", &json!({ "alive": alive }))?;
        Ok(true)
    }
}
