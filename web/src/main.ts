/**
 * The page's entry point: shows the chat (`/`) or the dashboard (`/#dashboard`) and wires
 * each view once. Bundled by esbuild into `crates/duplex-server/web/app.js`, which
 * `duplex serve` embeds.
 */
import { startChat } from "./chat.js";
import { Dashboard } from "./dashboard.js";
import { byId } from "./dom.js";

function main(): void {
  startChat();
  const dashboard = new Dashboard();
  const chatView = byId("chat-view");
  const dashboardView = byId("dashboard-view");
  const navChat = byId("nav-chat");
  const navDashboard = byId("nav-dashboard");

  const route = (): void => {
    const onDashboard = location.hash === "#dashboard" || location.pathname === "/dashboard";
    chatView.hidden = onDashboard;
    dashboardView.hidden = !onDashboard;
    navChat.toggleAttribute("aria-current", !onDashboard);
    navDashboard.toggleAttribute("aria-current", onDashboard);
    if (!onDashboard) navChat.setAttribute("aria-current", "page");
    else navDashboard.setAttribute("aria-current", "page");
    if (onDashboard) dashboard.start(sessionStorage.getItem("duplex.token") ?? "");
    else dashboard.stop();
  };
  window.addEventListener("hashchange", route);
  route();
}

main();
