#!/usr/bin/env node
// grpc-js interop server for duplex's bidi Chat service.
//
// Usage: node chat_server.js [--host 127.0.0.1] [--port 0] [--form package|bare]
//
// Every Msg received on a Chat call is answered with one Echo "<<text>>", in
// order. --form package serves proto/chat.proto (path /chat.Chat/Chat);
// --form bare serves interop/proto/bare/chat.proto (path /Chat/Chat).
// Once bound it prints "listening on HOST:PORT" (actual port) on stdout, then
// serves until SIGTERM/SIGINT, shuts down and exits 0.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const PROTO_FILES = {
  package: path.join(REPO_ROOT, 'proto', 'chat.proto'),
  bare: path.join(REPO_ROOT, 'interop', 'proto', 'bare', 'chat.proto'),
};

function loadChatService(form) {
  const def = protoLoader.loadSync(PROTO_FILES[form], {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(def);
  return form === 'package' ? loaded.chat.Chat : loaded.Chat;
}

function usage(msg) {
  process.stderr.write(`error: ${msg}\n` +
    'usage: node chat_server.js [--host H] [--port P] [--form package|bare]\n');
  process.exit(64);
}

function main() {
  let opts;
  try {
    opts = parseArgs({
      options: {
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string', default: '0' },
        form: { type: 'string', default: 'package' },
      },
    }).values;
  } catch (e) {
    usage(e.message);
  }
  if (!(opts.form in PROTO_FILES)) usage(`--form must be package or bare, not ${opts.form}`);
  const port = Number(opts.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`bad --port ${opts.port}`);

  const Chat = loadChatService(opts.form);
  const server = new grpc.Server();
  server.addService(Chat.service, {
    Chat(call) {
      call.on('data', (msg) => call.write({ text: `<<${msg.text}>>` }));
      call.on('end', () => call.end());
      call.on('error', () => {}); // cancelled/reset by the client: nothing to do
    },
  });

  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
    if (err) {
      process.stderr.write(`error: could not bind ${host}:${port}: ${err.message}\n`);
      process.exit(1);
    }
    // grpc-js >= 1.10 starts serving as soon as bindAsync completes.
    process.stdout.write(`listening on ${host}:${bound}\n`);
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    const force = setTimeout(() => { server.forceShutdown(); process.exit(0); }, 1000);
    server.tryShutdown(() => { clearTimeout(force); process.exit(0); });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
