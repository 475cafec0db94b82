//! UniProxy (`-panel-kind uniproxy`): the node API of V2board, Xboard and their forks, as
//! Xboard's `UniProxyController` serves it and V2bX's client uses it. Every request
//! carries the query parameters `token`, `node_id` and `node_type`; the routes are under
//! `/api/v1/server/UniProxy/`:
//!
//! - `config`: `base_config.push_interval` and `pull_interval` (seconds) replace
//!   -panel-interval; asked before each pull, with its own ETag.
//! - `user`: `{"users":[{"id","uuid","speed_limit","device_limit"}]}`, speed in Mbit/s
//!   (0 or null: none); the ETag as the panel sends it, 304 when unchanged. A user has no
//!   path or destination here: the path is -panel-path with `{uuid}` and `{id}` replaced,
//!   the destination -panel-dst.
//! - `push`: `{"<id>":[upload,download]}`, bytes since the last push the panel took (the
//!   billing ledger: acknowledged only on a 2xx).
//! - `alive`: `{"<id>":["ip", ...]}`, the client addresses of each user online here.
//! - `alivelist`: `{"alive":{"<id>":count}}`, the devices each user has on other nodes,
//!   which count against its `device_limit` here. Panels without it (404) are not asked
//!   again.
//!
//! The map from path to id is the one of the last list applied since start: until a list
//! arrives, nothing is pushed (the counts wait in the ledger).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ControllerLink, Failure, Fetched, Http, Protocol, Pulled};
use crate::config::PanelConfig;
use crate::control::command::new_user;
use crate::control::policy::Limits;

const CONFIG: &str = "/api/v1/server/UniProxy/config";
const USER: &str = "/api/v1/server/UniProxy/user";
const PUSH: &str = "/api/v1/server/UniProxy/push";
const ALIVE: &str = "/api/v1/server/UniProxy/alive";
const ALIVE_LIST: &str = "/api/v1/server/UniProxy/alivelist";

/// Bytes per second in one Mbit/s.
const MBIT: u64 = 1_000_000 / 8;

/// The state of the UniProxy protocol between exchanges.
pub(crate) struct UniProxy {
    /// The ETag of the user list last applied (only once applied).
    etag: Option<String>,
    /// The ETag of the node config last read.
    config_etag: Option<String>,
    /// Path to panel user id, from the list last applied; `None` until one is.
    ids: Option<HashMap<String, u64>>,
    /// -panel-path.
    template: String,
    /// -panel-dst.
    dst: String,
    /// -panel-max-remove, in thousandths.
    max_remove_permille: u32,
    /// Pull and push intervals from the panel's config, once it gave them.
    intervals: Option<(Duration, Duration)>,
    /// Whether the panel has `alivelist` (older V2board does not).
    alive_list: bool,
}

/// One user of the panel's list. Other fields (Xboard sends more) are ignored.
#[derive(Deserialize)]
struct PanelUser {
    id: u64,
    uuid: String,
    #[serde(default)]
    speed_limit: Option<u64>,
    #[serde(default)]
    device_limit: Option<u64>,
}

#[derive(Deserialize)]
struct UserList {
    users: Vec<PanelUser>,
}

impl UniProxy {
    pub(crate) fn new(config: &PanelConfig) -> UniProxy {
        UniProxy {
            etag: None,
            config_etag: None,
            ids: None,
            template: config.path_template.clone(),
            dst: config.dst.clone().unwrap_or_default(),
            max_remove_permille: config.max_remove_permille,
            intervals: None,
            alive_list: true,
        }
    }

    /// The path of a user: the template with its uuid and id.
    fn path(&self, user: &PanelUser) -> Result<String, String> {
        let uuid = &user.uuid;
        let safe = !uuid.is_empty()
            && uuid.len() <= 128
            && uuid
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'));
        if !safe {
            return Err(format!("user {}: uuid {uuid:?} cannot be a path", user.id));
        }
        Ok(self
            .template
            .replace("{uuid}", uuid)
            .replace("{id}", &user.id.to_string()))
    }

    /// Reads the node config for the intervals; a failure only keeps the ones in use.
    fn read_config(&mut self, http: &Http) {
        let bytes = match http.get(CONFIG, self.config_etag.as_deref()) {
            Ok(Fetched::NotModified) => return,
            Ok(Fetched::Body { bytes, etag }) => {
                self.config_etag = etag;
                bytes
            }
            Err(e) => {
                log::warn!("panel config: {e}; keeping the intervals in use");
                return;
            }
        };
        let seconds = |config: &Value, key: &str| -> Option<Duration> {
            let value = config
                .get("base_config")
                .and_then(|b| b.get(key))
                .or_else(|| config.get(key))?;
            let n = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))?;
            (n > 0).then(|| Duration::from_secs(n))
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(config) => {
                if let (Some(pull), Some(push)) = (
                    seconds(&config, "pull_interval"),
                    seconds(&config, "push_interval"),
                ) {
                    if self.intervals != Some((pull, push)) {
                        log::info!(
                            "panel config: pull every {}s, push every {}s",
                            pull.as_secs(),
                            push.as_secs()
                        );
                    }
                    self.intervals = Some((pull, push));
                }
            }
            Err(e) => log::warn!("panel config: bad json: {e}; keeping the intervals in use"),
        }
    }
}

impl Protocol for UniProxy {
    fn pull(&mut self, http: &Http, controller: &ControllerLink) -> Result<Pulled, Failure> {
        self.read_config(http);
        let (bytes, etag) = match http.get(USER, self.etag.as_deref())? {
            Fetched::NotModified => return Ok(Pulled::Unchanged),
            Fetched::Body { bytes, etag } => (bytes, etag),
        };
        let list: UserList = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::BadBody(format!("user list: {e}")))?;
        let mut users = Vec::with_capacity(list.users.len());
        let mut ids = HashMap::with_capacity(list.users.len());
        for user in &list.users {
            let path = self.path(user).map_err(Failure::BadBody)?;
            let limits = Limits {
                speed_limit: user.speed_limit.unwrap_or(0).saturating_mul(MBIT),
                device_limit: user.device_limit.unwrap_or(0),
                ..Limits::default()
            };
            let new = new_user(&path, &self.dst, limits)
                .map_err(|e| Failure::BadBody(format!("user {}: {e}", user.id)))?;
            users.push(new);
            ids.insert(path, user.id);
        }
        controller.sync(users, self.max_remove_permille)?;
        self.ids = Some(ids);
        self.etag = etag;
        Ok(Pulled::Applied)
    }

    fn push(&mut self, http: &Http, controller: &ControllerLink) -> Result<bool, Failure> {
        let Some(ids) = &self.ids else {
            return Ok(false);
        };
        let (id, lines) = controller.report()?;
        let mut body = Map::new();
        let mut unlisted = Vec::new();
        for line in &lines {
            match ids.get(&line.path) {
                Some(user) => {
                    let counts = [line.counts.bytes_up, line.counts.bytes_down];
                    body.insert(user.to_string(), serde_json::json!(counts));
                }
                None => unlisted.push(line),
            }
        }
        http.post(PUSH, &Value::Object(body))?;
        if !unlisted.is_empty() {
            let bytes: u64 = unlisted
                .iter()
                .map(|l| l.counts.bytes_up + l.counts.bytes_down)
                .sum();
            log::warn!(
                "panel push: {bytes} bytes of {} users the panel no longer lists (first: path {}) have no id to push under and are dropped",
                unlisted.len(),
                unlisted[0].path
            );
        }
        controller.acknowledge(id)?;
        Ok(true)
    }

    fn alive(&mut self, http: &Http, controller: &ControllerLink) -> Result<bool, Failure> {
        let Some(ids) = &self.ids else {
            return Ok(false);
        };
        let mut body = Map::new();
        for (path, ips) in controller.clients()? {
            if let Some(user) = ids.get(&path) {
                let ips = ips.iter().map(|ip| Value::from(ip.to_string())).collect();
                body.insert(user.to_string(), Value::Array(ips));
            }
        }
        http.post(ALIVE, &Value::Object(body))?;
        if !self.alive_list {
            return Ok(true);
        }
        let bytes = match http.get(ALIVE_LIST, None) {
            Ok(Fetched::Body { bytes, .. }) => bytes,
            Ok(Fetched::NotModified) => return Ok(true),
            Err(Failure::Status(404)) => {
                log::warn!("panel alivelist: 404, the panel has none; device limits count this node's devices only");
                self.alive_list = false;
                return Ok(true);
            }
            Err(e) => return Err(e),
        };
        #[derive(Deserialize)]
        struct AliveList {
            alive: HashMap<String, u64>,
        }
        let list: AliveList = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::BadBody(format!("alivelist: {e}")))?;
        let paths: HashMap<String, &String> = ids
            .iter()
            .map(|(path, id)| (id.to_string(), path))
            .collect();
        let remote = list
            .alive
            .into_iter()
            .filter_map(|(id, count)| Some((paths.get(&id)?.to_string(), count)))
            .collect();
        controller.remote_devices(remote)?;
        Ok(true)
    }

    fn intervals(&self) -> Option<(Duration, Duration)> {
        self.intervals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniproxy(template: &str) -> UniProxy {
        UniProxy {
            etag: None,
            config_etag: None,
            ids: None,
            template: template.into(),
            dst: "127.0.0.1:8388".into(),
            max_remove_permille: 500,
            intervals: None,
            alive_list: true,
        }
    }

    #[test]
    fn paths_come_from_the_template_and_unsafe_uuids_are_refused() {
        let user = |uuid: &str| PanelUser {
            id: 7,
            uuid: uuid.into(),
            speed_limit: None,
            device_limit: None,
        };
        let node = uniproxy("/ws/{uuid}-{id}");
        assert_eq!(node.path(&user("ab-cd")).unwrap(), "/ws/ab-cd-7");
        for bad in ["", "a/b", "a b", "a?b", "%2f"] {
            assert!(node.path(&user(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_user_list_needs_ids_and_uuids_and_takes_null_limits() {
        let list: UserList = serde_json::from_str(
            r#"{"users":[{"id":1,"uuid":"u1","speed_limit":null,"device_limit":2,"extra":1}]}"#,
        )
        .unwrap();
        assert_eq!(list.users[0].device_limit, Some(2));
        assert!(serde_json::from_str::<UserList>(r#"{"users":[{"uuid":"u"}]}"#).is_err());
        assert!(serde_json::from_str::<UserList>(r#"{"users":[{"id":-1,"uuid":"u"}]}"#).is_err());
        assert!(serde_json::from_str::<UserList>(r#"{"data":[]}"#).is_err());
    }
}
