#!/bin/sh
# Starts Debian's Tomcat 10 as whatever user the pod runs as (65532 under the restricted
# Pod Security Standard), with the manager's text API open to one deploy user.
#
# Debian's CATALINA_BASE (/var/lib/tomcat10, /etc/tomcat10) belongs to the tomcat user of
# a systemd install; this builds a base of its own in a writable directory instead (an
# emptyDir in the pod), from Debian's default configuration.
#
# Env: TOMCAT_DEPLOY_PASSWORD  required: the deploy user's password (from a Secret)
#      TOMCAT_DEPLOY_USER      the deploy user (default deployer); role manager-script only
#      CATALINA_BASE           where the base is made (default /tmp/tomcat)
set -eu

password=${TOMCAT_DEPLOY_PASSWORD:-}
user=${TOMCAT_DEPLOY_USER:-deployer}
base=${CATALINA_BASE:-/tmp/tomcat}
if [ -z "$password" ]; then
  echo "start-tomcat: TOMCAT_DEPLOY_PASSWORD is not set (give it from a Secret)" >&2
  exit 2
fi

# Attribute values in tomcat-users.xml: &, <, > and quotes escaped.
xml_attr() {
  printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' \
    -e 's/"/\&quot;/g' -e "s/'/\&apos;/g"
}

mkdir -p "$base/conf/Catalina/localhost" "$base/logs" "$base/temp" "$base/webapps" "$base/work"
# Debian's pristine copies: /etc/tomcat10 itself is readable only by the tomcat group.
for f in server.xml web.xml context.xml catalina.properties logging.properties; do
  cp "/usr/share/tomcat10/etc/$f" "$base/conf/$f"
done
umask 077
cat >"$base/conf/tomcat-users.xml" <<USERS
<?xml version="1.0" encoding="UTF-8"?>
<tomcat-users xmlns="http://tomcat.apache.org/xml" version="1.0">
  <user username="$(xml_attr "$user")" password="$(xml_attr "$password")" roles="manager-script"/>
</tomcat-users>
USERS
umask 022
# The manager from tomcat10-admin. Its own META-INF/context.xml allows only localhost; a
# context file here replaces it: in the cluster the deploy step comes from another pod, and
# the manager-script user's password is what guards the API.
cat >"$base/conf/Catalina/localhost/manager.xml" <<'CONTEXT'
<Context docBase="/usr/share/tomcat10-admin/manager" antiResourceLocking="false" privileged="true"/>
CONTEXT

java=$(command -v java)
JAVA_HOME=$(dirname "$(dirname "$(readlink -f "$java")")")
export JAVA_HOME CATALINA_BASE="$base" CATALINA_TMPDIR="$base/temp"
export CATALINA_HOME=${CATALINA_HOME:-/usr/share/tomcat10}
echo "start-tomcat: CATALINA_BASE=$base, manager user $user"
exec "$CATALINA_HOME/bin/catalina.sh" run
