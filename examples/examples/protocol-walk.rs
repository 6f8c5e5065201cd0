//! Walks one single-device backup through vdi-core's state machines and prints each call.
//!
//! No process, no shared memory: this shows the order of calls a client and a server make
//! (vdi-spec.md §10), the state each side is in after each call, and the exact codes they see,
//! including an error completion answered with `VDC_ClearError`.
//!
//! Run it with `cargo run -p examples --example protocol-walk`.

use vdi_core::{
    AbortReason, ClientConfig, ClientDeviceMachine, ClientSetMachine, CommandCode, CompletionCode,
    Config, Delivery, Error, Features, ServerCall, ServerConfig, ServerDeviceMachine,
    ServerSetMachine,
};

fn main() -> Result<(), Error> {
    let mut client = ClientSetMachine::new();
    let mut server = ServerSetMachine::new();

    let client_cfg = ClientConfig {
        features: Features::REQUEST_COMPLETE,
        ..ClientConfig::default()
    };
    client_cfg.validate()?;
    client.create(client_cfg.device_count)?;
    println!(
        "client CreateEx({client_cfg:?})\n  -> client {:?}",
        client.state()
    );

    server.apply(ServerCall::Open)?;
    println!("server Open -> server {:?}", server.state());
    let server_cfg = ServerConfig {
        features: Features::WRITE_MEDIA | Features::COMPLETE_ENABLED,
        ..ServerConfig::backup(65536, 1024 * 1024)
    };
    server_cfg.validate_for(&client_cfg)?;
    server.apply(ServerCall::BeginConfiguration)?;
    server.apply(ServerCall::RequestBuffers)?;
    server.apply(ServerCall::EndConfiguration)?;
    println!(
        "server BeginConfiguration/RequestBuffers/EndConfiguration -> server {:?}",
        server.state()
    );

    client.check_get_configuration()?;
    let cfg = Config::combine(&client_cfg, &server_cfg)?;
    client.configured();
    println!(
        "client GetConfiguration -> {:?}, block {} B, max transfer {} B, alignment {} B\n  -> client {:?}",
        cfg.features,
        cfg.block_size,
        cfg.max_transfer_size,
        cfg.alignment,
        client.state()
    );

    server.apply(ServerCall::OpenDevice)?;
    client.open_device(0, false, false)?;
    println!(
        "both OpenDevice -> client {:?}, server {:?}",
        client.state(),
        server.state()
    );

    let mut sdev = ServerDeviceMachine::new(4);
    let mut cdev = ClientDeviceMachine::new();
    let script = [
        (CommandCode::WRITE, CompletionCode::SUCCESS),
        (CommandCode::WRITE, CompletionCode::DISK_FULL),
        (CommandCode::CLEAR_ERROR, CompletionCode::SUCCESS),
        (CommandCode::WRITE, CompletionCode::SUCCESS),
        (CommandCode::FLUSH, CompletionCode::SUCCESS),
        (CommandCode::COMPLETE, CompletionCode::SUCCESS),
    ];
    for (code, answer) in script {
        sdev.send(code)?;
        client.check_get_command(0)?;
        let delivery = cdev.on_command(code);
        assert_eq!(delivery, Delivery::Deliver);
        client.check_complete_command(0)?;
        cdev.completed(code, answer);
        sdev.completed(code, answer);
        println!(
            "  {code:?} -> {answer:?} ({}): device {:?}",
            answer.0,
            sdev.state()
        );
        if sdev.state() == vdi_core::DeviceState::IoError {
            let refused = sdev.send(CommandCode::WRITE).unwrap_err();
            println!("    server SendCommand(VDC_Write) now fails: {refused}");
        }
    }
    sdev.close()?;
    client.device_closed(0);
    println!(
        "server CloseDevice; client GetCommand -> VD_E_CLOSE -> client {:?}",
        client.state()
    );

    let close = client.close(false);
    println!(
        "client Close -> {:?}, abort the server: {}",
        close.result, close.abort_peer
    );
    let close = server.close(false);
    println!("server Close -> {:?}", close.result);

    // The other ending: an abort.
    let mut client = ClientSetMachine::new();
    client.create(1)?;
    client.signal_abort(AbortReason::Signalled)?;
    println!(
        "\nan aborted set: GetConfiguration -> {}",
        client.check_get_configuration().unwrap_err()
    );
    Ok(())
}
