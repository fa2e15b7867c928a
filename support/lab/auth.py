"""Paste filter for the lab's Glance: a project-scoped admin for every request.

Sets the headers keystonemiddleware's ``auth_token`` would set for a valid
token, so that glance's normal ``context`` filter builds an authenticated,
project-scoped admin context (image create and the import API need a project).
Any ``X-Auth-Token`` the client sends (e.g. ``lab-token``) is accepted as is.
Plain WSGI, stdlib only.
"""

HEADERS = {
    "HTTP_X_IDENTITY_STATUS": "Confirmed",
    "HTTP_X_ROLES": "admin,member,reader",
}


def filter_factory(global_conf, project_id="lab-project", user_id="lab-admin", **_):
    headers = dict(HEADERS, HTTP_X_PROJECT_ID=project_id, HTTP_X_TENANT_ID=project_id,
                   HTTP_X_USER_ID=user_id)

    def make_filter(app):
        def labauth(environ, start_response):
            environ.update(headers)
            return app(environ, start_response)
        return labauth

    return make_filter
