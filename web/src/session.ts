/**
 * A room session over the WebSocket endpoint `/ws`: one binary message per protobuf
 * `ClientFrame` out and per `ServerFrame` in — the same session as gRPC `Hub.Connect`.
 *
 * It keeps the last offset shown in the room. When the connection drops it reconnects with
 * jittered exponential backoff (250 ms doubling up to 5 s, or the server's `retry_after_ms`)
 * and joins again with `after_offset` = that offset, so the room resumes with no gap; a
 * message at or below it is never shown twice. Publishes not yet acknowledged are sent again
 * after a reconnect under the same client message id, which the server deduplicates.
 * A refusal that retrying cannot change (the server ended the session as unauthenticated or
 * denied) stops the reconnecting and says why.
 *
 * The token travels as a WebSocket subprotocol (`duplex.bearer.<token>` beside `duplex.v1`),
 * never in the URL, which ends up in logs; without a token the presence name does
 * (`duplex.name.<name>`), so it must be a subprotocol token: letters, digits and `. _ ~ -`.
 */
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ClientFrameSchema,
  Code,
  PresenceEvent_Kind,
  ServerFrameSchema,
  type Member,
  type Message,
  type ServerFrame,
} from "./gen/duplex/v1/hub_pb.js";

/** What the session tells the page. */
export interface SessionView {
  /** The connection's state in one line (connected, lost, reconnecting in …). */
  status(text: string): void;
  /** A line among the messages: joined, reconnected and resumed, someone left. */
  notice(text: string): void;
  /** A command failed (the session goes on): shown until the next one. */
  error(text: string): void;
  /** A room message, in the room's order, each offset once. */
  message(message: Message, own: boolean): void;
  /** Who is in the room now. */
  members(members: Member[], unlisted: bigint): void;
  /** Whether publishing is possible now. */
  connected(open: boolean): void;
}

/** Backoff bounds between reconnect attempts. */
const MIN_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5000;
/** Earlier messages shown when first joining a room. */
const BACKLOG = 50;
/** Publishes kept for resending while not acknowledged; more are refused on screen. */
const MAX_UNACKED = 256;

/** The subprotocol the server speaks; the token rides in a second one. */
export const PROTOCOL = "duplex.v1";
const BEARER_PREFIX = "duplex.bearer.";
const NAME_PREFIX = "duplex.name.";

/** What a command in flight was, to report its reply or error. */
interface Pending {
  kind: "join" | "leave" | "publish";
  room: string;
  clientMessageId?: string;
}

/** A publish waiting for its acknowledgement. */
interface Unacked {
  room: string;
  text: string;
}

/** The joined room's resume state. */
interface RoomState {
  name: string;
  /** Highest offset shown: the resume point. */
  lastShown?: bigint;
  /** The room's last offset when first joined: the resume point if nothing was shown. */
  joinedAt?: bigint;
  /** Whether a join has succeeded once (a later join is a resume). */
  joinedOnce: boolean;
  /** The offset the join in flight resumes after, for the notice. */
  resumingAfter?: bigint;
  /** Present members by session id. */
  members: Map<string, Member>;
  unlisted: bigint;
}

/** A random id for a publish (works outside secure contexts, unlike `randomUUID`). */
function randomId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `PERMISSION_DENIED` for 7. */
export function codeName(code: Code): string {
  return Code[code] ?? `code ${code}`;
}

/** "2 here: alice, bob" / "0 here: nobody else". */
function whoIsHere(members: Iterable<Member>): string {
  const names = Array.from(members, (m) => m.name);
  return names.length === 0 ? "0 here: nobody else" : `${names.length} here: ${names.join(", ")}`;
}

export class RoomSession {
  private socket: WebSocket | undefined;
  private room: RoomState | undefined;
  private nextCommandId = 1n;
  private readonly pending = new Map<bigint, Pending>();
  /** Publishes not yet acknowledged, by client message id, in sending order. */
  private readonly unacked = new Map<string, Unacked>();
  /** Ids of our publishes whose message has not come back yet (marks "own"). */
  private readonly ownIds = new Set<string>();
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private wasConnected = false;
  private retryAfterMs = 0;
  /** Set when the server refused the session for good, or the page closed it. */
  private stopped = false;
  /** Why the server ended the session (its `session_end`), shown when the socket closes. */
  private endReason: string | undefined;

  constructor(
    private readonly url: string,
    private readonly name: string,
    private readonly token: string,
    private readonly view: SessionView,
  ) {}

  /** Joins `room` (leaving the previous one), connecting first if needed. */
  join(room: string): void {
    if (this.room && this.room.name !== room && this.isOpen()) {
      this.send({ case: "leave", value: { room: this.room.name } }, { kind: "leave", room: this.room.name });
    }
    this.room = { name: room, joinedOnce: false, members: new Map(), unlisted: 0n };
    this.view.members([], 0n);
    if (this.isOpen()) {
      this.sendJoin();
    } else if (!this.socket && this.timer === undefined) {
      this.connect();
    }
  }

  /** Publishes `text` to the joined room; sent again after a reconnect until acknowledged. */
  publish(text: string): void {
    const room = this.room;
    if (!room) return;
    if (this.unacked.size >= MAX_UNACKED) {
      this.view.error(`not sent: ${MAX_UNACKED} messages are still waiting for the server`);
      return;
    }
    const id = randomId();
    this.unacked.set(id, { room: room.name, text });
    this.ownIds.add(id);
    if (this.isOpen() && room.joinedOnce) {
      this.sendPublish(id, room.name, text);
    } else if (!this.isOpen()) {
      this.view.notice("not connected: the message will be sent on reconnect");
    }
  }

  /** Ends the session for good (the page leaves). */
  close(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.socket?.close(1000, "bye");
  }

  private isOpen(): boolean {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  private connect(): void {
    this.timer = undefined;
    if (this.stopped) return;
    const protocols = [PROTOCOL];
    // With a token the server names us after its subject.
    protocols.push(this.token !== "" ? BEARER_PREFIX + this.token : NAME_PREFIX + this.name);
    let socket: WebSocket;
    try {
      socket = new WebSocket(this.url, protocols);
    } catch (error) {
      this.stopped = true;
      this.view.error(`cannot connect: ${String(error)} (is the token pasted whole?)`);
      return;
    }
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this.retryAfterMs = 0;
      this.wasConnected = true;
      this.view.status("connected");
      if (this.room) this.sendJoin();
    };
    socket.onmessage = (event: MessageEvent) => {
      if (!(event.data instanceof ArrayBuffer)) return;
      let frame: ServerFrame;
      try {
        frame = fromBinary(ServerFrameSchema, new Uint8Array(event.data));
      } catch (error) {
        this.view.error(`the server sent a frame this page cannot read: ${String(error)}`);
        return;
      }
      this.handle(frame);
    };
    socket.onclose = (event: CloseEvent) => {
      if (this.socket === socket) this.socket = undefined;
      this.pending.clear();
      this.view.connected(false);
      if (this.stopped) return;
      const reason = this.endReason ?? (event.reason || `closed with code ${event.code}`);
      this.endReason = undefined;
      this.scheduleReconnect(reason);
    };
  }

  private scheduleReconnect(reason: string): void {
    this.attempt += 1;
    const backoff = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** Math.min(this.attempt - 1, 10));
    const delay = Math.round(Math.max(this.retryAfterMs, backoff * (0.5 + Math.random() * 0.5)));
    const what = this.wasConnected ? "connection lost" : "still no connection";
    this.wasConnected = false;
    this.view.status(`${what} (${reason}); reconnect attempt ${this.attempt} in ${delay} ms`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  private send(command: MessageInitShape<typeof ClientFrameSchema>["command"], pending: Pending): void {
    const commandId = this.nextCommandId++;
    this.pending.set(commandId, pending);
    const frame = create(ClientFrameSchema, { commandId, command });
    this.socket?.send(toBinary(ClientFrameSchema, frame));
  }

  private sendJoin(): void {
    const room = this.room;
    if (!room) return;
    if (room.joinedOnce) {
      // A resume: everything after what was shown, or after where the first join began.
      const after = room.lastShown ?? room.joinedAt ?? 0n;
      room.resumingAfter = after;
      this.send({ case: "join", value: { room: room.name, afterOffset: after } }, { kind: "join", room: room.name });
    } else {
      room.resumingAfter = undefined;
      this.send({ case: "join", value: { room: room.name, replayLast: BACKLOG } }, { kind: "join", room: room.name });
    }
  }

  private sendPublish(clientMessageId: string, room: string, text: string): void {
    this.send(
      {
        case: "publish",
        value: { room, payload: new TextEncoder().encode(text), contentType: "text/plain; charset=utf-8", clientMessageId },
      },
      { kind: "publish", room, clientMessageId },
    );
  }

  private handle(frame: ServerFrame): void {
    const room = this.room;
    switch (frame.frame.case) {
      case "message": {
        const message = frame.frame.value;
        if (!room || message.room !== room.name) return;
        if (room.lastShown !== undefined && message.offset <= room.lastShown) return;
        room.lastShown = message.offset;
        const own = this.ownIds.delete(message.clientMessageId);
        this.view.message(message, own);
        return;
      }
      case "joined": {
        const joined = frame.frame.value;
        this.pending.delete(joined.commandId);
        if (!room || joined.room !== room.name) return;
        room.members = new Map(joined.members.map((m) => [m.sessionId, m]));
        room.unlisted = joined.unlistedMembers;
        this.view.members([...room.members.values()], room.unlisted);
        const who = whoIsHere(room.members.values());
        if (room.resumingAfter !== undefined) {
          this.view.notice(`reconnected: resumed ${room.name} after offset ${room.resumingAfter} (${who})`);
        } else {
          this.view.notice(`joined ${room.name} (${who})`);
          room.joinedAt = joined.lastOffset;
        }
        room.joinedOnce = true;
        this.view.connected(true);
        // What was typed while the connection was down goes out now, in order.
        for (const [id, unacked] of this.unacked) {
          if (unacked.room === room.name) this.sendPublish(id, unacked.room, unacked.text);
        }
        return;
      }
      case "left":
        this.pending.delete(frame.frame.value.commandId);
        return;
      case "presence": {
        const event = frame.frame.value;
        if (!room || event.room !== room.name || !event.member) return;
        const member = event.member;
        if (event.kind === PresenceEvent_Kind.JOINED) {
          room.members.set(member.sessionId, member);
          this.view.notice(`${member.name} joined`);
        } else {
          room.members.delete(member.sessionId);
          this.view.notice(`${member.name} left`);
        }
        this.view.members([...room.members.values()], room.unlisted);
        return;
      }
      case "publishAck": {
        const ack = frame.frame.value;
        const pending = this.pending.get(ack.commandId);
        this.pending.delete(ack.commandId);
        if (pending?.clientMessageId !== undefined) this.unacked.delete(pending.clientMessageId);
        return;
      }
      case "error": {
        const error = frame.frame.value;
        const pending = this.pending.get(error.commandId);
        this.pending.delete(error.commandId);
        const what = pending ? `${pending.kind} ${pending.room}` : `command in ${error.room || "the session"}`;
        this.view.error(`${what} failed: ${codeName(error.code)}: ${error.message}`);
        if (pending?.kind === "publish" && pending.clientMessageId !== undefined) {
          // Refused, not lost: sending it again would be refused again.
          this.unacked.delete(pending.clientMessageId);
          this.ownIds.delete(pending.clientMessageId);
        }
        if (pending?.kind === "join" && room && error.code === Code.FAILED_PRECONDITION && error.earliestOffset > 0n) {
          // Retention removed what we missed: say so and resume from what is left.
          this.view.notice(`messages before offset ${error.earliestOffset} are no longer kept; resuming from there`);
          room.lastShown = error.earliestOffset - 1n;
          this.sendJoin();
        }
        return;
      }
      case "lagged": {
        const lagged = frame.frame.value;
        const dropped = lagged.dropped > 0n ? `, ${lagged.dropped} skipped` : "";
        this.view.notice(`fell behind in ${lagged.room} after offset ${lagged.lastOffset}${dropped}`);
        return;
      }
      case "shutdown": {
        const shutdown = frame.frame.value;
        this.retryAfterMs = shutdown.retryAfterMs;
        this.view.status(`server going away: ${shutdown.reason}`);
        return;
      }
      case "sessionEnd": {
        const end = frame.frame.value;
        if (end.code === Code.UNAUTHENTICATED || end.code === Code.PERMISSION_DENIED) {
          // Retrying with the same token cannot change this.
          this.stopped = true;
          this.view.error(`session refused: ${codeName(end.code)}: ${end.message}`);
          this.view.status(`disconnected: ${codeName(end.code)} (check the token, then join again)`);
        } else if (end.code !== Code.OK) {
          this.endReason = `${codeName(end.code)}: ${end.message}`;
        }
        return;
      }
      case "pong":
      case undefined:
        return;
    }
  }
}
