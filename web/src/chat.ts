/**
 * The chat view: the join form, the message list, the publish box and who is here, driven
 * by a {@link RoomSession}. Everything others send is inserted as text (never HTML) inside
 * `<bdi>`, so a payload cannot inject markup or flip the direction of the line around it.
 * The list keeps the last {@link MAX_SHOWN} lines, so a busy room cannot grow the page
 * without bound. Each message line carries `data-offset`, `data-room` and `data-sender`.
 */
import { byId, element } from "./dom.js";
import { RoomSession, type SessionView } from "./session.js";
import type { Member, Message } from "./gen/duplex/v1/hub_pb.js";

/** Lines kept in the message list. */
const MAX_SHOWN = 500;
const TOKEN_KEY = "duplex.token";
const NAME_KEY = "duplex.name";

const decoder = new TextDecoder();

/** The `sub` claim of a JWT, read without verifying it (only to label "you"). */
function tokenSubject(token: string): string | undefined {
  try {
    const payload = token.split(".")[1] ?? "";
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const sub: unknown = JSON.parse(json).sub;
    return typeof sub === "string" ? sub : undefined;
  } catch {
    return undefined;
  }
}

export function startChat(): void {
  const form = byId<HTMLFormElement>("join-form");
  const nameInput = byId<HTMLInputElement>("name");
  const roomInput = byId<HTMLInputElement>("room");
  const tokenInput = byId<HTMLInputElement>("token");
  const publishForm = byId<HTMLFormElement>("publish-form");
  const textInput = byId<HTMLInputElement>("text");
  const sendButton = byId<HTMLButtonElement>("send");
  const list = byId<HTMLOListElement>("messages");
  const presence = byId<HTMLUListElement>("presence");
  const presenceCount = byId("presence-count");
  const roomName = byId("room-name");
  const connection = byId("connection");
  const errors = byId("errors");

  nameInput.value = sessionStorage.getItem(NAME_KEY) ?? `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
  tokenInput.value = sessionStorage.getItem(TOKEN_KEY) ?? "";

  const append = (line: HTMLLIElement): void => {
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    list.append(line);
    while (list.childElementCount > MAX_SHOWN) list.firstElementChild?.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  };

  const view: SessionView = {
    status(text) {
      connection.textContent = text;
    },
    notice(text) {
      append(element("li", "notice", `— ${text}`));
      if (text.startsWith("reconnected")) connection.textContent = text;
    },
    error(text) {
      errors.textContent = text;
    },
    message(message: Message, own: boolean) {
      const line = element("li", own ? "message own" : "message");
      line.dataset.room = message.room;
      line.dataset.offset = message.offset.toString();
      line.dataset.sender = message.sender;
      const sender = element("bdi", "sender", own ? `${message.sender} (you)` : message.sender);
      const text = element("bdi", "text", decoder.decode(message.payload));
      const offset = element("span", "offset", `#${message.offset}`);
      offset.setAttribute("aria-hidden", "true");
      line.append(sender, text, offset);
      append(line);
    },
    members(members: Member[], unlisted: bigint) {
      const you = element("li", "own", `${selfName} (you)`);
      presence.replaceChildren(you, ...members.map((m) => element("li", "", m.name)));
      const more = unlisted > 0n ? ` + ${unlisted}` : "";
      presenceCount.textContent = `(${members.length + 1}${more})`;
    },
    connected(open: boolean) {
      textInput.disabled = !open;
      sendButton.disabled = !open;
      // Right after a join, typing goes to the message box.
      if (open && focusOnJoin) {
        focusOnJoin = false;
        textInput.focus();
      }
    },
  };

  let session: RoomSession | undefined;
  /** How the server names this page: the token's subject, or the name given. */
  let selfName = "";
  let focusOnJoin = false;
  let joinedAs = "";
  let joinedWith = "";

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    const name = nameInput.value.trim();
    const token = tokenInput.value.trim();
    sessionStorage.setItem(NAME_KEY, name);
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    errors.textContent = "";
    if (!session || name !== joinedAs || token !== joinedWith) {
      // A new identity needs a new session.
      session?.close();
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      session = new RoomSession(`${scheme}//${location.host}/ws`, name, token, view);
      joinedAs = name;
      selfName = token ? (tokenSubject(token) ?? "token holder") : name;
      joinedWith = token;
      connection.textContent = "connecting…";
    }
    list.replaceChildren();
    roomName.textContent = `in ${roomInput.value}`;
    focusOnJoin = true;
    session.join(roomInput.value);
  });

  publishForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = textInput.value;
    if (!session || text.trim() === "") return;
    errors.textContent = "";
    session.publish(text);
    textInput.value = "";
  });
}
