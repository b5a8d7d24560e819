//! Test helper: the two sides of the design's `coordinate_with_backend` example, each in its
//! own process. `comm_agent WORKSPACE backend` answers one request; `comm_agent WORKSPACE
//! frontend` sends the request and waits for the answer, printing the outcome.

use maos_coordination::comm::{ChannelWatcher, Cursor, FileChannel, Filter};
use maos_coordination::{
    AgentId, AgentRegistry, AgentRole, ChannelName, Message, MessageMetadata, Priority, Recipients,
    Registration, Workspace,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApiSpec {
    name: String,
    endpoints: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
enum FrontendRequest {
    ImplementApi { spec: ApiSpec, priority: Priority },
}

#[derive(Debug, Serialize, Deserialize)]
enum BackendResponse {
    ApiImplemented { endpoints: Vec<String> },
    Error { reason: String },
}

const CHANNEL: &str = "backend-frontend";

/// The design's example, on the real API.
async fn coordinate_with_backend(
    ws: &Workspace,
    me: AgentId,
    api_spec: &ApiSpec,
) -> anyhow::Result<usize> {
    let channel = FileChannel::open(ws, ChannelName::new(CHANNEL)?)?;
    let message = Message::new(
        me.clone(),
        Recipients::Role(AgentRole::backend()),
        FrontendRequest::ImplementApi {
            spec: api_spec.clone(),
            priority: Priority::High,
        },
    )
    .with_metadata(MessageMetadata {
        priority: Priority::High,
        ..MessageMetadata::default()
    });
    let receipt = channel.send(&message).await?;
    // Wait for the response: read on from our own message, as this agent.
    let filter = Filter::for_agent(ws, me)?;
    let mut watcher =
        ChannelWatcher::from_cursor(channel, Cursor::after(receipt.position), filter)?;
    let response: Message<BackendResponse> = watcher.wait_for_message().await?;
    anyhow::ensure!(
        response.metadata.reply_to == Some(receipt.id),
        "not a reply to us"
    );
    match response.payload {
        BackendResponse::ApiImplemented { endpoints } => {
            println!("Backend implemented {} endpoints", endpoints.len());
            Ok(endpoints.len())
        }
        BackendResponse::Error { reason } => anyhow::bail!("Backend error: {reason}"),
    }
}

async fn backend(ws: &Workspace, me: AgentId) -> anyhow::Result<()> {
    let channel = FileChannel::open(ws, ChannelName::new(CHANNEL)?)?;
    let filter = Filter::for_agent(ws, me.clone())?;
    let mut watcher = ChannelWatcher::from_cursor(channel.clone(), Cursor::start(), filter)?;
    println!("ready");
    let request = watcher.next::<FrontendRequest>().await?;
    let FrontendRequest::ImplementApi { spec, .. } = request.message.payload;
    let reply = Message::new(
        me,
        Recipients::Agent(request.message.sender.clone()),
        BackendResponse::ApiImplemented {
            endpoints: spec.endpoints,
        },
    )
    .with_metadata(MessageMetadata {
        reply_to: Some(request.message.id),
        ..MessageMetadata::default()
    });
    let r = channel.send(&reply).await?;
    println!("replied at {}", r.position);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = crate::args().collect();
    let [_, ws, role] = args.as_slice() else {
        anyhow::bail!("usage: comm_agent WORKSPACE backend|frontend");
    };
    let ws = Workspace::open_or_init(ws)?;
    let reg = AgentRegistry::new(&ws);
    match role.as_str() {
        "backend" => {
            let me = AgentId::new("backend-1")?;
            reg.register(Registration::new(me.clone()).role(AgentRole::backend()))?;
            backend(&ws, me).await
        }
        "frontend" => {
            let me = AgentId::new("frontend-1")?;
            reg.register(Registration::new(me.clone()).role(AgentRole::frontend()))?;
            let spec = ApiSpec {
                name: "users".into(),
                endpoints: vec![
                    "GET /users".into(),
                    "POST /users".into(),
                    "GET /users/{id}".into(),
                ],
            };
            coordinate_with_backend(&ws, me, &spec).await.map(|_| ())
        }
        other => anyhow::bail!("unknown side {other}"),
    }
}
